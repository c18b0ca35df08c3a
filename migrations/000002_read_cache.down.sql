DROP TRIGGER IF EXISTS memberships_cache_update ON memberships;
DROP FUNCTION IF EXISTS memberships_record_updated();

CREATE OR REPLACE FUNCTION memberships_record_added() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM added) THEN
        RETURN NULL;
    END IF;
    INSERT INTO membership_history (user_id, segment_id, slug, operation, reason, at)
    SELECT a.user_id, a.segment_id, s.slug, 'add', history_reason(), a.added_at
      FROM added a
      JOIN segments s ON s.id = a.segment_id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION memberships_record_removed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ts     timestamptz;
    reason text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM removed) THEN
        RETURN NULL;
    END IF;
    ts := history_now();
    reason := history_reason();
    INSERT INTO membership_history (user_id, segment_id, slug, operation, reason, at)
    SELECT r.user_id, r.segment_id, s.slug, 'remove',
           CASE WHEN r.expires_at <= ts THEN 'ttl' ELSE reason END,
           CASE WHEN r.expires_at <= ts THEN greatest(r.expires_at, r.added_at) ELSE ts END
      FROM removed r
      JOIN segments s ON s.id = r.segment_id;
    RETURN NULL;
END
$$;

DROP TABLE IF EXISTS cache_invalidations;
