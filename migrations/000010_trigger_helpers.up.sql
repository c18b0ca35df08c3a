-- Small functions that the membership triggers call, so that a later
-- migration changes one of them rather than restating whole trigger bodies.
-- The current body of every function and trigger is in docs/schema.sql
-- (`make docs` regenerates it from a migrated database).

-- queue_cache_invalidation tells every API process's read cache that the
-- users p_user_ids changed: a row of cache_invalidations, which the relay
-- turns into NOTIFY segments_cache (internal/postgres/cache.go). More than
-- 20,000 users are queued as NULL: every user.
CREATE FUNCTION queue_cache_invalidation(p_user_ids bigint[]) RETURNS void
LANGUAGE sql VOLATILE AS $$
    INSERT INTO cache_invalidations (user_ids)
    SELECT CASE WHEN cardinality(p_user_ids) <= 20000 THEN p_user_ids END
    WHERE cardinality(p_user_ids) > 0
$$;

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
    PERFORM queue_cache_invalidation(ARRAY(SELECT DISTINCT user_id FROM added));
    RETURN NULL;
END
$$;

-- A removed membership that had already expired is recorded as a 'ttl'
-- removal at its expiry (never before it was added), whatever the reason set.
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
    PERFORM queue_cache_invalidation(ARRAY(SELECT DISTINCT user_id FROM removed));
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
    PERFORM queue_cache_invalidation(ARRAY(SELECT DISTINCT user_id FROM updated));
    RETURN NULL;
END
$$;
