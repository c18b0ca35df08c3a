ALTER TABLE cache_invalidations ALTER COLUMN user_ids SET STORAGE EXTENDED;

-- The function as migration 000007 left it.
CREATE OR REPLACE FUNCTION memberships_record_added() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM added) THEN
        RETURN NULL;
    END IF;
    INSERT INTO membership_history (user_id, segment_id, slug, operation, reason, at, expires_at)
    SELECT a.user_id, a.segment_id, s.slug, 'add', history_reason(), a.added_at, a.expires_at
      FROM added a
      JOIN segments s ON s.id = a.segment_id;
    -- More than 20,000 users are queued as NULL: every user.
    INSERT INTO cache_invalidations (user_ids)
    SELECT CASE WHEN cardinality(ids) <= 20000 THEN ids END
      FROM (SELECT array_agg(DISTINCT user_id) AS ids FROM added) AS t;
    RETURN NULL;
END
$$;

