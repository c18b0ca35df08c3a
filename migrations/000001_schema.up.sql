-- The schema: segments, the user registry, memberships and their history.
-- This file holds tables, constraints, indexes, triggers and the functions
-- triggers call, plus the documented bucket hash; every statement the
-- service runs is in internal/postgres, beside the method that runs it.
--
-- History is written only by the statement-level triggers below. Every
-- transaction that inserts or deletes memberships first sets its reason:
--
--     SELECT set_config('segments.reason', 'manual', true);
--
-- A transaction may also fix the instant of its change (the service's
-- membership changes do, so that an added_at, the expiry check and every
-- removal share one clock reading):
--
--     SELECT set_config('segments.now', clock_timestamp()::text, true);
--
-- A membership whose expiry has passed counts as absent everywhere. Whoever
-- deletes it, the trigger records its removal as reason 'ttl' at the moment
-- it expired, so history never depends on when a worker got to it.

CREATE TABLE segments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug        text COLLATE "C" NOT NULL,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- A percent segment goes to this share of users; NULL for a manual one.
    auto_percent numeric(5, 2) CHECK (auto_percent >= 0 AND auto_percent <= 100),
    -- Users with seq <= population_seq form the rollout's population.
    population_seq bigint,
    rollout_status text CHECK (rollout_status IN ('pending', 'running', 'done', 'failed')),
    -- How many users the rollout gives the segment to, and has given so far.
    rollout_total    bigint,
    rollout_assigned bigint NOT NULL DEFAULT 0,
    -- The last (segment_hash, user id) of the chosen set.
    rollout_threshold_hash bigint,
    rollout_threshold_user bigint,
    CONSTRAINT segments_slug_key UNIQUE (slug),
    CONSTRAINT segments_slug_format CHECK (slug ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$'),
    CONSTRAINT segments_auto_has_rollout CHECK ((auto_percent IS NULL) = (rollout_status IS NULL))
);

-- The population that percent-based segments are drawn from. Ids belong to
-- another service; a user is registered when first seen. seq numbers users
-- in order of registration.
CREATE TABLE users (
    id         bigint PRIMARY KEY CHECK (id > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    seq        bigint GENERATED ALWAYS AS IDENTITY
);

-- Memberships have no foreign keys: on bulk writes (rollouts) the two
-- checks cost more than the insert itself. The same guarantees come from
-- the writers instead:
--  * users are never deleted, and every write path registers the user in
--    the same transaction before giving it segments;
--  * every write path holds the segment's row FOR KEY SHARE while it
--    inserts memberships of it, and deleting a segment first locks its row
--    FOR UPDATE: a delete waits for those writers and then removes their
--    memberships, and a writer that comes after the delete finds no
--    segment.
-- The tests check that no membership outlives its user or segment.
CREATE TABLE memberships (
    user_id    bigint NOT NULL,
    segment_id bigint NOT NULL,
    source     text NOT NULL DEFAULT 'manual' CHECK (source IN ('manual', 'auto')),
    added_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz,
    PRIMARY KEY (user_id, segment_id),
    CONSTRAINT memberships_not_born_expired CHECK (expires_at IS NULL OR expires_at > added_at)
);

-- Member counts (index-only, expiry included) and segment deletion.
CREATE INDEX memberships_segment_idx ON memberships (segment_id, expires_at);
-- Finding what has expired.
CREATE INDEX memberships_expiry_idx ON memberships (expires_at) WHERE expires_at IS NOT NULL;

-- History is keyed by (user_id, at, id), which serves reading one user's
-- history; (at, id) serves month reports of all users.
CREATE TABLE membership_history (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    user_id    bigint NOT NULL,
    segment_id bigint NOT NULL,
    slug       text COLLATE "C" NOT NULL,
    operation  text NOT NULL CHECK (operation IN ('add', 'remove')),
    reason     text NOT NULL CHECK (reason IN ('manual', 'ttl', 'auto', 'segment_deleted')),
    at         timestamptz NOT NULL,
    CONSTRAINT membership_history_pkey PRIMARY KEY (user_id, at, id)
);

CREATE INDEX membership_history_at_idx ON membership_history (at, id);

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

-- segment_hash is the documented, stable hash of a user for a segment: the
-- first 4 bytes of SHA-256 over "<slug>:<user id in decimal>", read as a
-- big-endian unsigned 32-bit integer. (text::bytea keeps the bytes as they
-- are because slugs and ids contain no backslash.) The Go twin is
-- domain.SegmentHash; README.md publishes test vectors for both.
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

-- history_reason returns the reason the current transaction set, and refuses
-- to let a membership change go unexplained.
CREATE FUNCTION history_reason() RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r text := current_setting('segments.reason', true);
BEGIN
    IF r IS NULL OR r = '' THEN
        RAISE EXCEPTION 'segments.reason is not set'
            USING HINT = 'SELECT set_config(''segments.reason'', ''manual'', true) before changing memberships';
    END IF;
    RETURN r;
END
$$;

-- history_now is the instant of the current change: segments.now if the
-- transaction fixed it, else the clock.
CREATE FUNCTION history_now() RETURNS timestamptz
LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(nullif(current_setting('segments.now', true), '')::timestamptz, clock_timestamp())
$$;

CREATE FUNCTION memberships_record_added() RETURNS trigger
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

-- A removed membership that had already expired is recorded as a 'ttl'
-- removal at its expiry (never before it was added), whatever the reason set.
CREATE FUNCTION memberships_record_removed() RETURNS trigger
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

CREATE FUNCTION memberships_forbid_rekey() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a membership''s user and segment cannot change: delete it and insert another';
END
$$;

CREATE FUNCTION memberships_forbid_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'memberships cannot be truncated: DELETE them so that history records it';
END
$$;

CREATE TRIGGER memberships_history_insert
    AFTER INSERT ON memberships
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION memberships_record_added();

CREATE TRIGGER memberships_history_delete
    AFTER DELETE ON memberships
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION memberships_record_removed();

CREATE TRIGGER memberships_rekey
    BEFORE UPDATE OF user_id, segment_id ON memberships
    FOR EACH ROW
    WHEN (OLD.user_id <> NEW.user_id OR OLD.segment_id <> NEW.segment_id)
    EXECUTE FUNCTION memberships_forbid_rekey();

CREATE TRIGGER memberships_truncate
    BEFORE TRUNCATE ON memberships
    FOR EACH STATEMENT EXECUTE FUNCTION memberships_forbid_truncate();
