-- Exact counts for monitoring: the functions report what they did, by
-- history reason, so that the service can count memberships added and
-- removed without reading history back.
--
-- register_users now returns (registered, auto_added);
-- change_user_segments also returns rows ('renewed', slug) for a held
-- segment whose expiry changed, ('expired', slug) for each expired
-- membership it purged and ('auto', slug) for each percent segment a user
-- it registered got. 'added' now means a membership that appeared.

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
