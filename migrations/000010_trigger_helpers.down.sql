-- The trigger functions as migrations 000007 and 000009 left them.
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
    -- More than 20,000 users are queued as NULL: every user.
    INSERT INTO cache_invalidations (user_ids)
    SELECT CASE WHEN cardinality(ids) <= 20000 THEN ids END
      FROM (SELECT array_agg(DISTINCT user_id) AS ids FROM removed) AS t;
    RETURN NULL;
END
$$;

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

DROP FUNCTION queue_cache_invalidation(bigint[]);
