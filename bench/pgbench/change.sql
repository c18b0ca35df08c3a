-- The exact statements of POST /api/v1/users/{id}/segments
-- (postgres.UserRepo.ChangeUserSegments) for an add-2/remove-1 change of
-- three distinct seeded segments SEG_1..SEG_20 of a registered user, sent
-- as the service sends them: one pipeline, one implicit transaction, one
-- round trip. Run with -M prepared. Keep in step with
-- internal/postgres/users.go (TestPgbenchChangeScript checks it).
\set uid random(1, 100000)
\set a random(0, 19)
\set b (:a + random(1, 9)) % 20
\set c (:a + random(10, 19)) % 20
\startpipeline
SELECT known.slugs, e.passed,
       set_config('segments.change', CASE WHEN cardinality(known.slugs) = 3 AND NOT e.passed
                                          THEN 'accepted' ELSE 'refused' END, true)
FROM (SELECT coalesce(array_agg(slug), '{}') AS slugs
      FROM (SELECT slug FROM segments WHERE slug = ANY (ARRAY['SEG_' || (:a + 1), 'SEG_' || (:b + 1), 'SEG_' || (:c + 1)]::text[]) ORDER BY id FOR KEY SHARE) AS k) AS known,
     (SELECT coalesce(NULL::timestamptz <= clock_timestamp(), false) AS passed) AS e;
WITH locked AS (SELECT id FROM users WHERE id = :uid FOR NO KEY UPDATE)
SELECT set_config('segments.change',
                  CASE WHEN current_setting('segments.change') = 'accepted' AND NOT EXISTS (SELECT FROM locked)
                       THEN 'unregistered' ELSE current_setting('segments.change') END, true);
SELECT coalesce(NULL::timestamptz <= c.now, false),
       set_config('segments.now', c.now::text, true),
       set_config('segments.reason', 'manual', true),
       set_config('segments.change', CASE WHEN NULL::timestamptz <= c.now THEN 'refused'
                                          ELSE current_setting('segments.change') END, true)
FROM (SELECT clock_timestamp() AS now) AS c;
DELETE FROM memberships m
USING segments s
WHERE m.user_id = :uid AND s.id = m.segment_id AND current_setting('segments.change') = 'accepted'
  AND (m.expires_at <= current_setting('segments.now')::timestamptz OR s.slug = ANY (ARRAY['SEG_' || (:c + 1)]::text[]))
RETURNING s.slug, coalesce(m.expires_at <= current_setting('segments.now')::timestamptz, false);
INSERT INTO memberships AS m (user_id, segment_id, source, added_at, expires_at)
SELECT :uid, s.id, 'manual', current_setting('segments.now')::timestamptz, NULL
FROM segments s
WHERE s.slug = ANY (ARRAY['SEG_' || (:a + 1), 'SEG_' || (:b + 1)]::text[]) AND current_setting('segments.change') = 'accepted'
ORDER BY s.id
ON CONFLICT (user_id, segment_id) DO UPDATE
   SET expires_at = EXCLUDED.expires_at
 WHERE m.expires_at IS DISTINCT FROM EXCLUDED.expires_at
RETURNING (SELECT slug FROM segments WHERE id = m.segment_id), xmax = 0;
SELECT s.slug, m.added_at, m.expires_at, m.source
FROM memberships m
JOIN segments s ON s.id = m.segment_id
WHERE m.user_id = :uid AND current_setting('segments.change') = 'accepted'
  AND (m.expires_at IS NULL OR m.expires_at > current_setting('segments.now')::timestamptz)
ORDER BY s.slug;
\endpipeline
