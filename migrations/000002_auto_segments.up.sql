-- Percent segments: a segment created with auto_percent p goes to
--  * exactly round(N·p/100) of the N users registered when it was created:
--    those with the lowest segment_hash, ties broken by user id (the
--    rollout, in batches, by the worker);
--  * every user registered later whose segment_bucket is below p·100 (at
--    registration, in the registering transaction).
--
-- Registration and the creation of a percent segment exclude each other
-- through an advisory lock (registry_lock()): registration takes it shared,
-- creation exclusive. So every user either committed before the segment
-- existed (and is in its rollout population, users.seq <= population_seq)
-- or registered after and saw the segment (and got the bucket rule).

ALTER TABLE users ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;

-- Bulk writes (rollouts) pay per row for every index and foreign key check;
-- the two foreign keys of memberships cost more than the insert itself. The
-- same guarantees come from the writers instead:
--  * users are never deleted, and every write path registers the user in
--    the same transaction before giving it segments;
--  * every write path holds the segment's row FOR KEY SHARE while it inserts
--    memberships of it (change_user_segments when it resolves slugs,
--    register_users below, a rollout batch when it claims), and deleting a
--    segment first locks its row FOR UPDATE: a delete waits for those
--    writers and then removes their memberships, and a writer that comes
--    after the delete finds no segment.
-- History is keyed by (user_id, at, id), which also serves reading a user's
-- history, in place of a separate key and index.
ALTER TABLE memberships DROP CONSTRAINT memberships_user_id_fkey;
ALTER TABLE memberships DROP CONSTRAINT memberships_segment_id_fkey;
ALTER TABLE membership_history DROP CONSTRAINT membership_history_pkey;
DROP INDEX membership_history_user_idx;
ALTER TABLE membership_history ADD CONSTRAINT membership_history_pkey PRIMARY KEY (user_id, at, id);

ALTER TABLE segments
    ADD COLUMN auto_percent numeric(5, 2) CHECK (auto_percent >= 0 AND auto_percent <= 100),
    -- Users with seq <= population_seq form the rollout's population.
    ADD COLUMN population_seq bigint,
    ADD COLUMN rollout_status text CHECK (rollout_status IN ('pending', 'running', 'done', 'failed')),
    -- How many users the rollout gives the segment to, and has given so far.
    ADD COLUMN rollout_total bigint,
    ADD COLUMN rollout_assigned bigint NOT NULL DEFAULT 0,
    -- The last (segment_hash, user id) of the chosen set.
    ADD COLUMN rollout_threshold_hash bigint,
    ADD COLUMN rollout_threshold_user bigint,
    ADD CONSTRAINT segments_auto_has_rollout CHECK ((auto_percent IS NULL) = (rollout_status IS NULL));

-- A rollout's population split into ranges of user ids. A batch claims an
-- unfinished range (FOR UPDATE SKIP LOCKED), gives the segment to the chosen
-- users in it and marks it done in one transaction, so batches can run in
-- parallel and a batch cut short is simply done again.
CREATE TABLE rollout_batches (
    segment_id bigint NOT NULL REFERENCES segments (id) ON DELETE CASCADE,
    first_user bigint NOT NULL,
    last_user  bigint NOT NULL,
    done       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (segment_id, first_user)
);

-- registry_lock is the advisory lock key that orders registrations against
-- the creation of percent segments.
CREATE FUNCTION registry_lock() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 7346012917432108715::bigint $$;

-- segment_hash is the documented, stable hash of a user for a segment: the
-- first 4 bytes of SHA-256 over "<slug>:<user id in decimal>", read as a
-- big-endian unsigned 32-bit integer. (text::bytea keeps the bytes as they
-- are because slugs and ids contain no backslash.)
CREATE FUNCTION segment_hash(p_slug text, p_user_id bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ('x' || encode(substring(sha256((p_slug || ':' || p_user_id::text)::bytea) FROM 1 FOR 4), 'hex'))::bit(32)::bigint
$$;

-- segment_bucket maps segment_hash onto 10,000 buckets, in hash order:
-- floor(hash · 10000 / 2^32), from 0 to 9999. A user registered after a
-- segment with auto_percent p gets it iff bucket < p · 100.
CREATE FUNCTION segment_bucket(p_slug text, p_user_id bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ((segment_hash(p_slug, p_user_id) * 10000) >> 32)::integer
$$;

-- register_users registers the ids not yet known, gives each new user the
-- percent segments its buckets admit it to (history reason auto), and
-- returns how many users were new and how many memberships they got. Ids
-- are inserted in order so that concurrent calls with overlapping ids
-- cannot deadlock.
--
-- change_user_segments: as in 000001, but a new user is registered through
-- register_users, so it gets its percent segments first; and for
-- monitoring it also returns ('renewed', slug) for a held segment whose
-- expiry changed, ('expired', slug) for each expired membership it purged
-- and ('auto', slug) for each percent segment a user it registered got.
-- 'added' means a membership that appeared.
DROP FUNCTION register_users(bigint[]);
CREATE FUNCTION register_users(p_ids bigint[], OUT registered bigint, OUT auto_added bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_new bigint[];
BEGIN
    PERFORM pg_advisory_xact_lock_shared(registry_lock());
    WITH ins AS (
        INSERT INTO users (id)
        SELECT DISTINCT u.id FROM unnest(p_ids) AS u(id) ORDER BY u.id
        ON CONFLICT (id) DO NOTHING
        RETURNING id
    )
    SELECT array_agg(ins.id) INTO v_new FROM ins;
    registered := coalesce(cardinality(v_new), 0);
    auto_added := 0;
    IF v_new IS NULL THEN
        RETURN;
    END IF;

    PERFORM set_config('segments.reason', 'auto', true);
    INSERT INTO memberships (user_id, segment_id, source)
    SELECT n.id, s.id, 'auto'
      FROM unnest(v_new) AS n(id)
     CROSS JOIN (SELECT id, slug, auto_percent
                   FROM segments
                  WHERE auto_percent IS NOT NULL
                    FOR KEY SHARE) AS s
     WHERE segment_bucket(s.slug, n.id) < s.auto_percent * 100
     ORDER BY n.id, s.id;
    GET DIAGNOSTICS auto_added = ROW_COUNT;
END
$$;

CREATE OR REPLACE FUNCTION change_user_segments(
    p_user_id    bigint,
    p_add        text[],
    p_remove     text[],
    p_expires_at timestamptz
) RETURNS TABLE (change text, slug text, added_at timestamptz, expires_at timestamptz, source text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now      timestamptz;
    v_known    text[];
    v_add      bigint[];
    v_remove   bigint[];
    v_unknown  text[];
    v_auto     bigint[];
    v_expired  text[];
    v_inserted bigint[];
    v_renewed  bigint[];
    v_removed  text[];
BEGIN
    SELECT array_agg(l.slug),
           array_agg(l.id) FILTER (WHERE l.slug = ANY (p_add)),
           array_agg(l.id) FILTER (WHERE l.slug = ANY (p_remove))
      INTO v_known, v_add, v_remove
      FROM (SELECT s.id, s.slug
              FROM segments s
             WHERE s.slug = ANY (p_add || p_remove)
               FOR KEY SHARE) AS l;

    SELECT array_agg(DISTINCT u.slug ORDER BY u.slug)
      INTO v_unknown
      FROM unnest(p_add || p_remove) AS u(slug)
     WHERE u.slug <> ALL (coalesce(v_known, '{}'));

    IF v_unknown IS NOT NULL THEN
        RETURN QUERY
        SELECT 'unknown'::text, u.slug, NULL::timestamptz, NULL::timestamptz, NULL::text
          FROM unnest(v_unknown) AS u(slug);
        RETURN;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM users u WHERE u.id = p_user_id) THEN
        PERFORM register_users(ARRAY[p_user_id]);
        SELECT array_agg(m.segment_id) INTO v_auto FROM memberships m WHERE m.user_id = p_user_id;
    END IF;
    PERFORM 1 FROM users u WHERE u.id = p_user_id FOR NO KEY UPDATE;

    v_now := clock_timestamp();
    IF p_expires_at IS NOT NULL AND p_expires_at <= v_now THEN
        RAISE EXCEPTION 'expiry % is not in the future', p_expires_at USING ERRCODE = '22023';
    END IF;

    PERFORM set_config('segments.reason', 'ttl', true);
    WITH d AS (
        DELETE FROM memberships m
         WHERE m.user_id = p_user_id AND m.expires_at <= v_now
        RETURNING m.segment_id
    )
    SELECT array_agg(s.slug) INTO v_expired
      FROM d JOIN segments s ON s.id = d.segment_id;

    PERFORM set_config('segments.reason', 'manual', true);
    WITH d AS (
        DELETE FROM memberships m
         WHERE m.user_id = p_user_id AND m.segment_id = ANY (v_remove)
        RETURNING m.segment_id
    )
    SELECT array_agg(s.slug) INTO v_removed
      FROM d JOIN segments s ON s.id = d.segment_id;

    WITH i AS (
        INSERT INTO memberships AS m (user_id, segment_id, source, expires_at)
        SELECT p_user_id, a.id, 'manual', p_expires_at
          FROM unnest(v_add) AS a(id)
         ORDER BY a.id
        ON CONFLICT (user_id, segment_id) DO UPDATE
           SET expires_at = EXCLUDED.expires_at
         WHERE m.expires_at IS DISTINCT FROM EXCLUDED.expires_at
        RETURNING m.segment_id, (xmax = 0) AS inserted
    )
    SELECT array_agg(i.segment_id) FILTER (WHERE i.inserted),
           array_agg(i.segment_id) FILTER (WHERE NOT i.inserted)
      INTO v_inserted, v_renewed
      FROM i;

    RETURN QUERY
    SELECT CASE WHEN m.segment_id = ANY (v_inserted) THEN 'added'
                WHEN m.segment_id = ANY (v_renewed) THEN 'renewed'
                ELSE 'kept' END,
           s.slug, m.added_at, m.expires_at, m.source
      FROM memberships m
      JOIN segments s ON s.id = m.segment_id
     WHERE m.user_id = p_user_id
       AND (m.expires_at IS NULL OR m.expires_at > v_now)
    UNION ALL
    SELECT 'removed', r.slug COLLATE "C", NULL, NULL, NULL
      FROM unnest(v_removed) AS r(slug)
    UNION ALL
    SELECT 'expired', e.slug COLLATE "C", NULL, NULL, NULL
      FROM unnest(v_expired) AS e(slug)
    UNION ALL
    SELECT 'auto', s.slug, NULL, NULL, NULL
      FROM segments s
     WHERE s.id = ANY (v_auto)
    ORDER BY 2;
END
$$;
