-- GET /users/{id}/segments?at=T answers exactly what GET answered at T,
-- expires_at included. History's add rows now carry the expiry the
-- membership was added with, and a re-add that changes the expiry of a held
-- membership (an UPDATE, which writes no add or remove) is recorded here.
-- Neither is part of the CSV or JSON history, which list add and remove
-- events only. (Add rows written before this migration have no expiry.)
ALTER TABLE membership_history ADD COLUMN expires_at timestamptz;

CREATE TABLE membership_expiry_changes (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    user_id    bigint NOT NULL,
    segment_id bigint NOT NULL,
    at         timestamptz NOT NULL,
    -- The new expiry; NULL made the membership permanent.
    expires_at timestamptz,
    CONSTRAINT membership_expiry_changes_pkey PRIMARY KEY (user_id, at, id)
);

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

-- A new expiry of a held membership is recorded (for ?at=) and changes
-- what a read answers.
CREATE OR REPLACE FUNCTION memberships_record_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM updated) THEN
        RETURN NULL;
    END IF;
    INSERT INTO membership_expiry_changes (user_id, segment_id, at, expires_at)
    SELECT n.user_id, n.segment_id, history_now(), n.expires_at
      FROM updated n
      JOIN before o ON o.user_id = n.user_id AND o.segment_id = n.segment_id
     WHERE o.expires_at IS DISTINCT FROM n.expires_at;
    INSERT INTO cache_invalidations (user_ids)
    SELECT CASE WHEN cardinality(ids) <= 20000 THEN ids END
      FROM (SELECT array_agg(DISTINCT user_id) AS ids FROM updated) AS t;
    RETURN NULL;
END
$$;

DROP TRIGGER memberships_cache_update ON memberships;
CREATE TRIGGER memberships_cache_update
    AFTER UPDATE ON memberships
    REFERENCING OLD TABLE AS before NEW TABLE AS updated
    FOR EACH STATEMENT EXECUTE FUNCTION memberships_record_updated();
