-- Core schema: segments, the user registry, memberships and their history.
--
-- History is written only by the statement-level triggers at the end of this
-- file. Every statement that inserts or deletes memberships must first set the
-- transaction-local reason:
--
--     SELECT set_config('segments.reason', 'manual', true);
--
-- A membership whose expiry has passed counts as absent everywhere. Whoever
-- deletes it, the trigger records its removal as reason 'ttl' at the moment
-- it expired, so history never depends on when a worker got to it.

CREATE TABLE segments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug        text COLLATE "C" NOT NULL,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT segments_slug_key UNIQUE (slug),
    CONSTRAINT segments_slug_format CHECK (slug ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$')
);

-- The population that percent-based segments are drawn from. Ids belong to
-- another service; a user is registered when first seen.
CREATE TABLE users (
    id         bigint PRIMARY KEY CHECK (id > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    user_id    bigint NOT NULL REFERENCES users (id),
    segment_id bigint NOT NULL REFERENCES segments (id),
    source     text NOT NULL DEFAULT 'manual' CHECK (source IN ('manual', 'auto')),
    added_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz,
    PRIMARY KEY (user_id, segment_id)
);

-- Member counts (index-only, expiry included) and segment deletion.
CREATE INDEX memberships_segment_idx ON memberships (segment_id, expires_at);
-- Finding what has expired.
CREATE INDEX memberships_expiry_idx ON memberships (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE membership_history (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint NOT NULL,
    segment_id bigint NOT NULL,
    slug       text COLLATE "C" NOT NULL,
    operation  text NOT NULL CHECK (operation IN ('add', 'remove')),
    reason     text NOT NULL CHECK (reason IN ('manual', 'ttl', 'auto', 'segment_deleted')),
    at         timestamptz NOT NULL
);

CREATE INDEX membership_history_user_idx ON membership_history (user_id, at, id);

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
    ts     timestamptz := clock_timestamp();
    reason text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM removed) THEN
        RETURN NULL;
    END IF;
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

-- register_users adds the ids that are not registered yet and returns how
-- many were new. Ids are inserted in order so that concurrent calls with
-- overlapping ids cannot deadlock.
CREATE FUNCTION register_users(p_ids bigint[]) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    INSERT INTO users (id)
    SELECT DISTINCT u.id FROM unnest(p_ids) AS u(id) ORDER BY u.id
    ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- change_user_segments applies one request's adds and removes for one user
-- atomically, in one round trip:
--
--  1. resolve every slug, locking the segments against a concurrent delete;
--     if any is unknown, return only rows ('unknown', slug) and change nothing;
--  2. register the user and lock it, which serializes all writes for the user;
--  3. delete the user's expired memberships (history: 'ttl' at their expiry);
--  4. delete the removed segments, insert the added ones (an added segment the
--     user already holds keeps its added_at and takes p_expires_at);
--  5. return the user's memberships as ('added' | 'kept', slug, ...) and the
--     removed slugs as ('removed', slug), in byte order of slug.
--
-- p_expires_at NULL means permanent. An expiry that is not in the future
-- raises SQLSTATE 22023.
CREATE FUNCTION change_user_segments(
    p_user_id    bigint,
    p_add        text[],
    p_remove     text[],
    p_expires_at timestamptz
) RETURNS TABLE (change text, slug text, added_at timestamptz, expires_at timestamptz, source text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz;
    v_known   text[];
    v_add     bigint[];
    v_remove  bigint[];
    v_unknown text[];
    v_added   bigint[];
    v_removed text[];
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

    PERFORM set_config('segments.reason', 'manual', true);
    INSERT INTO users (id) VALUES (p_user_id) ON CONFLICT (id) DO NOTHING;
    PERFORM 1 FROM users u WHERE u.id = p_user_id FOR NO KEY UPDATE;

    v_now := clock_timestamp();
    IF p_expires_at IS NOT NULL AND p_expires_at <= v_now THEN
        RAISE EXCEPTION 'expiry % is not in the future', p_expires_at USING ERRCODE = '22023';
    END IF;

    PERFORM set_config('segments.reason', 'ttl', true);
    DELETE FROM memberships m WHERE m.user_id = p_user_id AND m.expires_at <= v_now;

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
        RETURNING m.segment_id
    )
    SELECT array_agg(i.segment_id) INTO v_added FROM i;

    RETURN QUERY
    SELECT CASE WHEN m.segment_id = ANY (v_added) THEN 'added' ELSE 'kept' END,
           s.slug, m.added_at, m.expires_at, m.source
      FROM memberships m
      JOIN segments s ON s.id = m.segment_id
     WHERE m.user_id = p_user_id
       AND (m.expires_at IS NULL OR m.expires_at > v_now)
    UNION ALL
    SELECT 'removed', r.slug COLLATE "C", NULL, NULL, NULL
      FROM unnest(v_removed) AS r(slug)
    ORDER BY 2;
END
$$;
