-- The read cache's feed. Every API process keeps users' segments in memory;
-- whoever changes memberships must tell them. The statement-level triggers
-- that write history see every change, so they also queue the users it
-- touched in cache_invalidations, in the writer's transaction. Each API
-- process relays queued rows to NOTIFY segments_cache a few milliseconds
-- later, in batches (internal/postgres/cache.go).
--
-- Why not NOTIFY from the trigger: PostgreSQL serialises the commits of
-- notifying transactions (a global lock held until the commit is flushed),
-- which cut the throughput of membership changes by 60 % on a durable
-- server. A row here costs the writer one small insert; the table is
-- unlogged because a crash restarts every backend, so every listener loses
-- its connection and drops its whole cache anyway.
CREATE UNLOGGED TABLE cache_invalidations (
    -- The users whose memberships changed; NULL for "every user", which a
    -- statement touching more than 20,000 users queues instead of a list.
    user_ids bigint[],
    -- When the change was written, for the notification lag metric.
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);

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

-- A new expiry of a held membership writes no history but changes what a
-- read answers.
CREATE FUNCTION memberships_record_updated() RETURNS trigger
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
