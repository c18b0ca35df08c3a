-- The exact statements of POST /api/v1/users/{id}/segments
-- (postgres.UserRepo.ChangeUserSegments) for an add-2/remove-1 change of
-- three distinct seeded segments SEG_1..SEG_20, sent as the service sends
-- them: one pipeline, one implicit transaction, one round trip. Run with
-- -M prepared. Keep in step with internal/postgres/users.go.
\set uid random(1, 100000)
\set a random(0, 19)
\set b (:a + random(1, 9)) % 20
\set c (:a + random(10, 19)) % 20
\startpipeline
WITH known AS MATERIALIZED (
	SELECT slug FROM segments WHERE slug = ANY (ARRAY['SEG_' || (:a + 1), 'SEG_' || (:b + 1), 'SEG_' || (:c + 1)]::text[]) ORDER BY id FOR KEY SHARE
), unknown AS (
	SELECT coalesce(array_agg(n.slug ORDER BY n.slug), '{}') AS slugs
	FROM (SELECT DISTINCT u.slug COLLATE "C" AS slug FROM unnest(ARRAY['SEG_' || (:a + 1), 'SEG_' || (:b + 1), 'SEG_' || (:c + 1)]::text[]) AS u(slug)) AS n
	WHERE n.slug NOT IN (SELECT slug FROM known)
)
SELECT slugs, passed,
       set_config('segments.change', CASE WHEN slugs = '{}' AND NOT passed THEN 'accepted' ELSE 'refused' END, true)
FROM unknown, (SELECT coalesce(NULL::timestamptz <= clock_timestamp(), false) AS passed) AS e;
SELECT pg_advisory_xact_lock_shared(7346012917432108715)
WHERE NOT (current_setting('segments.change', true) IS NOT DISTINCT FROM 'refused')
  AND EXISTS (SELECT 1 FROM unnest(ARRAY[:uid]::bigint[]) AS n(id)
              WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = n.id));
SELECT set_config('segments.reason', 'auto', true);
WITH new AS (
	INSERT INTO users (id)
	SELECT DISTINCT n.id FROM unnest(ARRAY[:uid]::bigint[]) AS n(id)
	WHERE NOT (current_setting('segments.change', true) IS NOT DISTINCT FROM 'refused')
	ORDER BY n.id
	ON CONFLICT (id) DO NOTHING
	RETURNING id
), granted AS (
	INSERT INTO memberships (user_id, segment_id, source)
	SELECT n.id, s.id, 'auto'
	FROM new n
	CROSS JOIN (SELECT id, slug, auto_percent FROM segments WHERE auto_percent IS NOT NULL FOR KEY SHARE) AS s
	WHERE segment_bucket(s.slug, n.id) < s.auto_percent * 100
	ORDER BY n.id, s.id
	RETURNING 1
)
SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM granted);
SELECT FROM users WHERE id = :uid FOR NO KEY UPDATE;
SELECT coalesce(NULL::timestamptz <= c.now, false),
       set_config('segments.now', c.now::text, true),
       set_config('segments.reason', 'manual', true),
       set_config('segments.change', CASE WHEN NULL::timestamptz <= c.now THEN 'refused' ELSE current_setting('segments.change') END, true)
FROM (SELECT clock_timestamp() AS now) AS c;
DELETE FROM memberships m
USING segments s
WHERE m.user_id = :uid AND s.id = m.segment_id AND NOT (current_setting('segments.change', true) IS NOT DISTINCT FROM 'refused')
  AND (m.expires_at <= current_setting('segments.now')::timestamptz OR s.slug = ANY (ARRAY['SEG_' || (:c + 1)]::text[]))
RETURNING s.slug, coalesce(m.expires_at <= current_setting('segments.now')::timestamptz, false);
INSERT INTO memberships AS m (user_id, segment_id, source, added_at, expires_at)
SELECT :uid, s.id, 'manual', current_setting('segments.now')::timestamptz, NULL
FROM segments s
WHERE s.slug = ANY (ARRAY['SEG_' || (:a + 1), 'SEG_' || (:b + 1)]::text[]) AND NOT (current_setting('segments.change', true) IS NOT DISTINCT FROM 'refused')
ORDER BY s.id
ON CONFLICT (user_id, segment_id) DO UPDATE SET expires_at = EXCLUDED.expires_at
WHERE m.expires_at IS DISTINCT FROM EXCLUDED.expires_at
RETURNING (SELECT slug FROM segments WHERE id = m.segment_id), xmax = 0;
SELECT s.slug, m.added_at, m.expires_at, m.source
FROM memberships m
JOIN segments s ON s.id = m.segment_id
WHERE m.user_id = :uid
  AND (m.expires_at IS NULL OR m.expires_at > current_setting('segments.now')::timestamptz)
ORDER BY s.slug;
\endpipeline
