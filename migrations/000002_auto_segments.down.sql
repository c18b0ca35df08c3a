-- Back to the core schema: percent segments go, the functions return to
-- their 000001 versions.
DROP FUNCTION register_users(bigint[]);

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
CREATE OR REPLACE FUNCTION change_user_segments(
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

DROP TABLE rollout_batches;
DROP FUNCTION segment_bucket(text, bigint);
DROP FUNCTION segment_hash(text, bigint);
DROP FUNCTION registry_lock();
ALTER TABLE segments
    DROP CONSTRAINT segments_auto_has_rollout,
    DROP COLUMN rollout_threshold_user,
    DROP COLUMN rollout_threshold_hash,
    DROP COLUMN rollout_assigned,
    DROP COLUMN rollout_total,
    DROP COLUMN rollout_status,
    DROP COLUMN population_seq,
    DROP COLUMN auto_percent;
ALTER TABLE users DROP COLUMN seq;
ALTER TABLE membership_history DROP CONSTRAINT membership_history_pkey;
ALTER TABLE membership_history ADD CONSTRAINT membership_history_pkey PRIMARY KEY (id);
CREATE INDEX membership_history_user_idx ON membership_history (user_id, at, id);
ALTER TABLE memberships ADD CONSTRAINT memberships_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id);
ALTER TABLE memberships ADD CONSTRAINT memberships_segment_id_fkey FOREIGN KEY (segment_id) REFERENCES segments (id);
