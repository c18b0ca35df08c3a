DROP TRIGGER memberships_cache_update ON memberships;

CREATE OR REPLACE FUNCTION memberships_record_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM updated) THEN
        RETURN NULL;
    END IF;
    INSERT INTO cache_invalidations (user_ids)
    SELECT CASE WHEN cardinality(ids) <= 20000 THEN ids END
      FROM (SELECT array_agg(DISTINCT user_id) AS ids FROM updated) AS t;
    RETURN NULL;
END
$$;

CREATE TRIGGER memberships_cache_update
    AFTER UPDATE ON memberships
    REFERENCING NEW TABLE AS updated
    FOR EACH STATEMENT EXECUTE FUNCTION memberships_record_updated();

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
    INSERT INTO cache_invalidations (user_ids)
    SELECT CASE WHEN cardinality(ids) <= 20000 THEN ids END
      FROM (SELECT array_agg(DISTINCT user_id) AS ids FROM added) AS t;
    RETURN NULL;
END
$$;

DROP TABLE membership_expiry_changes;
ALTER TABLE membership_history DROP COLUMN expires_at;
