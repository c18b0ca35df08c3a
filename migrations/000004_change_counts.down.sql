-- Back to the 000002 versions of register_users and change_user_segments.
DROP FUNCTION register_users(bigint[]);
-- register_users registers the ids not yet known, gives each new user the
-- percent segments its buckets admit it to (history reason auto), and
-- returns how many were new. Ids are inserted in order so that concurrent
-- calls with overlapping ids cannot deadlock.
CREATE FUNCTION register_users(p_ids bigint[]) RETURNS bigint
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
    IF v_new IS NULL THEN
        RETURN 0;
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
    RETURN cardinality(v_new);
END
$$;

-- change_user_segments: as before, but a new user is registered through
-- register_users, so it gets its percent segments first.
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

    IF NOT EXISTS (SELECT 1 FROM users u WHERE u.id = p_user_id) THEN
        PERFORM register_users(ARRAY[p_user_id]);
    END IF;
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
