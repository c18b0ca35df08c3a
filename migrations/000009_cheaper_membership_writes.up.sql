-- Two costs of every membership a statement adds, paid thousands of times
-- by a rollout batch (BENCHMARKS.md, "A percent segment's change"):
--
-- history_reason() in the SELECT list was a PL/pgSQL call for every added
-- row (about 0.9 µs each); it is now read once per statement.
CREATE OR REPLACE FUNCTION memberships_record_added() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    reason text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM added) THEN
        RETURN NULL;
    END IF;
    reason := history_reason();
    INSERT INTO membership_history (user_id, segment_id, slug, operation, reason, at, expires_at)
    SELECT a.user_id, a.segment_id, s.slug, 'add', reason, a.added_at, a.expires_at
      FROM added a
      JOIN segments s ON s.id = a.segment_id;
    -- More than 20,000 users are queued as NULL: every user.
    INSERT INTO cache_invalidations (user_ids)
    SELECT CASE WHEN cardinality(ids) <= 20000 THEN ids END
      FROM (SELECT array_agg(DISTINCT user_id) AS ids FROM added) AS t;
    RETURN NULL;
END
$$;

-- The user ids a change queues for the read caches were compressed on the
-- way in (pglz: about 12 ms for 10,000 ids) and decompressed again by the
-- relay that turns them into notifications; the table is unlogged and its
-- rows live for a second at most, so they are stored as they are.
ALTER TABLE cache_invalidations ALTER COLUMN user_ids SET STORAGE EXTERNAL;
