-- The schema of a database migrated to the newest version: every table,
-- index, function and trigger as it stands now. Generated from migrations/
-- by make docs (go run ./tools/cmd/schema docs/schema.sql); make docs-check
-- fails when it is out of date. Do not edit: write a migration.
--
-- PostgreSQL database dump
--

--
-- Name: audit_change(text, jsonb, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_change(name text, old jsonb, new jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT CASE WHEN old IS NOT DISTINCT FROM new THEN '{}'::jsonb
           ELSE jsonb_build_object(name, jsonb_build_object('from', coalesce(old, 'null'), 'to', coalesce(new, 'null'))) END
$$;

--
-- Name: audit_context(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_context() RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
    c text := current_setting('segments.audit', true);
BEGIN
    IF c IS NULL OR c = '' THEN
        RAISE EXCEPTION 'an administrative change must say who makes it'
            USING HINT = 'SET LOCAL segments.audit = ''{"actor": "..."}'' first';
    END IF;
    RETURN c::jsonb;
END
$$;

--
-- Name: audit_import(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_import() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO audit_log (actor, action, target_kind, target_slug, changes, request_id)
        VALUES (NEW.actor, 'create', 'import', NEW.segment_slug,
            audit_change('id', NULL, to_jsonb(NEW.id)) || audit_change('mode', NULL, to_jsonb(NEW.mode))
            || audit_change('expires_at', NULL, CASE WHEN NEW.expires_at IS NOT NULL THEN audit_time(NEW.expires_at) END),
            NEW.request_id);
    ELSE
        INSERT INTO audit_log (actor, action, target_kind, target_slug, changes, error, request_id)
        VALUES (NEW.actor, 'update', 'import', NEW.segment_slug,
            audit_change('status', '"pending"', to_jsonb(NEW.status))
            || audit_change('received', NULL, to_jsonb(NEW.received))
            || audit_change('processed', '0', to_jsonb(NEW.processed))
            || audit_change('added', '0', to_jsonb(NEW.added))
            || audit_change('removed', '0', to_jsonb(NEW.removed))
            || audit_change('unchanged', '0', to_jsonb(NEW.unchanged))
            || audit_change('conflicts', '0', to_jsonb(NEW.conflicts)),
            NEW.error, NEW.request_id);
    END IF;
    RETURN NULL;
END
$$;

--
-- Name: audit_layer(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_layer() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    ctx jsonb := audit_context();
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO audit_log (actor, action, target_kind, target_slug, changes, request_id)
        VALUES (ctx->>'actor', 'delete', 'layer', OLD.slug, '{}', ctx->>'request_id');
    ELSE
        INSERT INTO audit_log (actor, action, target_kind, target_slug, changes, request_id)
        VALUES (ctx->>'actor', 'create', 'layer', NEW.slug,
                jsonb_build_object('slug', jsonb_build_object('from', NULL, 'to', NEW.slug::text))
                || audit_change('description', NULL, to_jsonb(nullif(NEW.description, ''))), ctx->>'request_id');
    END IF;
    RETURN NULL;
END
$$;

--
-- Name: audit_segment(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_segment() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    ctx     jsonb := audit_context();
    changes jsonb := '{}';
    action  text := CASE TG_OP WHEN 'INSERT' THEN 'create' WHEN 'UPDATE' THEN 'update' ELSE 'delete' END;
BEGIN
    -- Built with plain expressions (plpgsql's fast path) and one INSERT
    -- with a cached plan: a PATCH pays about 0.1 ms for its entry.
    IF TG_OP = 'INSERT' THEN
        changes := jsonb_build_object('slug', jsonb_build_object('from', NULL, 'to', NEW.slug::text));
        IF NEW.description <> '' THEN
            changes := changes || jsonb_build_object('description', jsonb_build_object('from', NULL, 'to', NEW.description));
        END IF;
        IF NEW.auto_percent IS NOT NULL THEN
            changes := changes || jsonb_build_object('auto_percent', jsonb_build_object('from', NULL, 'to', NEW.auto_percent::float8));
        END IF;
        IF NEW.delete_at IS NOT NULL THEN
            changes := changes || jsonb_build_object('delete_at', jsonb_build_object('from', NULL, 'to', audit_time(NEW.delete_at)));
        END IF;
        IF NEW.auto_percent_schedule <> '[]' THEN
            changes := changes || jsonb_build_object('auto_percent_schedule', jsonb_build_object('from', NULL, 'to', NEW.auto_percent_schedule));
        END IF;
        IF NEW.layer_id IS NOT NULL THEN
            changes := changes || jsonb_build_object('layer', jsonb_build_object('from', NULL,
                'to', (SELECT l.slug::text FROM layers l WHERE l.id = NEW.layer_id)));
        END IF;
    ELSIF TG_OP = 'UPDATE' AND NOT ctx ? 'error' THEN
        IF OLD.description IS DISTINCT FROM NEW.description THEN
            changes := changes || jsonb_build_object('description', jsonb_build_object('from', OLD.description, 'to', NEW.description));
        END IF;
        IF OLD.auto_percent IS DISTINCT FROM NEW.auto_percent THEN
            changes := changes || jsonb_build_object('auto_percent', jsonb_build_object('from', OLD.auto_percent::float8, 'to', NEW.auto_percent::float8));
        END IF;
        IF OLD.delete_at IS DISTINCT FROM NEW.delete_at THEN
            changes := changes || jsonb_build_object('delete_at', jsonb_build_object('from', audit_time(OLD.delete_at), 'to', audit_time(NEW.delete_at)));
        END IF;
        IF OLD.auto_percent_schedule IS DISTINCT FROM NEW.auto_percent_schedule THEN
            changes := changes || jsonb_build_object('auto_percent_schedule',
                jsonb_build_object('from', OLD.auto_percent_schedule, 'to', NEW.auto_percent_schedule));
        END IF;
    END IF;
    -- A scheduled step that could not apply is recorded with its error and
    -- no changes (its leaving the plan is its only write).
    INSERT INTO audit_log (actor, action, target_kind, target_slug, changes, error, request_id)
    VALUES (ctx->>'actor', action, 'segment', CASE TG_OP WHEN 'DELETE' THEN OLD.slug ELSE NEW.slug END,
            changes, ctx->>'error', ctx->>'request_id');
    RETURN NULL;
END
$$;

--
-- Name: audit_time(timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_time(t timestamp with time zone) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    SELECT CASE WHEN t IS NULL THEN 'null'::jsonb
           ELSE to_jsonb(rtrim(rtrim(to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '0'), '.') || 'Z') END
$$;

--
-- Name: history_now(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.history_now() RETURNS timestamp with time zone
    LANGUAGE sql
    AS $$
    SELECT coalesce(nullif(current_setting('segments.now', true), '')::timestamptz, clock_timestamp())
$$;

--
-- Name: history_reason(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.history_reason() RETURNS text
    LANGUAGE plpgsql STABLE
    AS $$
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

--
-- Name: layer_bucket(text, bigint); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.layer_bucket(p_slug text, p_user_id bigint) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT ((layer_hash(p_slug, p_user_id) * 10000) >> 32)::integer
$$;

--
-- Name: layer_hash(text, bigint); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.layer_hash(p_slug text, p_user_id bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT segment_hash('layer:' || p_slug, p_user_id)
$$;

--
-- Name: memberships_check_layer(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.memberships_check_layer() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM added a JOIN segments s ON s.id = a.segment_id
               WHERE a.layer_id IS DISTINCT FROM s.layer_id) THEN
        RAISE EXCEPTION 'a membership''s layer_id must be its segment''s'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

--
-- Name: memberships_count_added(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.memberships_count_added() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM queue_member_count_change(ARRAY(SELECT segment_id FROM added), 1);
    RETURN NULL;
END
$$;

--
-- Name: memberships_count_removed(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.memberships_count_removed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM queue_member_count_change(ARRAY(SELECT segment_id FROM removed), -1);
    RETURN NULL;
END
$$;

--
-- Name: memberships_forbid_rekey(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.memberships_forbid_rekey() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION 'a membership''s user and segment cannot change: delete it and insert another';
END
$$;

--
-- Name: memberships_forbid_truncate(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.memberships_forbid_truncate() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION 'memberships cannot be truncated: DELETE them so that history records it';
END
$$;

--
-- Name: memberships_record_added(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.memberships_record_added() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: memberships_record_removed(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.memberships_record_removed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: memberships_record_updated(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.memberships_record_updated() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: queue_cache_invalidation(bigint[]); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.queue_cache_invalidation(p_user_ids bigint[]) RETURNS void
    LANGUAGE sql
    AS $$
    INSERT INTO cache_invalidations (user_ids)
    SELECT CASE WHEN cardinality(p_user_ids) <= 20000 THEN p_user_ids END
    WHERE cardinality(p_user_ids) > 0
$$;

--
-- Name: queue_member_count_change(bigint[], integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.queue_member_count_change(p_segment_ids bigint[], p_sign integer) RETURNS void
    LANGUAGE sql
    AS $$
    INSERT INTO member_count_deltas (segment_id, n)
    SELECT id, p_sign * count(*) FROM unnest(p_segment_ids) AS t(id) GROUP BY id
$$;

--
-- Name: segment_bucket(text, bigint); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.segment_bucket(p_slug text, p_user_id bigint) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT ((segment_hash(p_slug, p_user_id) * 10000) >> 32)::integer
$$;

--
-- Name: segment_hash(text, bigint); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.segment_hash(p_slug text, p_user_id bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT ('x' || encode(substring(sha256((p_slug || ':' || p_user_id::text)::bytea) FROM 1 FOR 4), 'hex'))::bit(32)::bigint
$$;

--
-- Name: segment_member_count(bigint); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.segment_member_count(p_segment_id bigint) RETURNS bigint
    LANGUAGE sql STABLE
    AS $$
    SELECT coalesce((SELECT c.n FROM member_counts c WHERE c.segment_id = p_segment_id), 0)
         + coalesce((SELECT sum(d.n) FROM member_count_deltas d WHERE d.segment_id = p_segment_id), 0)
         - (SELECT count(*) FROM memberships m
            WHERE m.segment_id = p_segment_id AND m.expires_at IS NOT NULL AND m.expires_at <= now())
$$;

--
-- Name: audit_log; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.audit_log (
    id bigint NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    actor text,
    action text NOT NULL,
    target_kind text NOT NULL,
    target_slug text NOT NULL COLLATE pg_catalog."C",
    changes jsonb NOT NULL,
    error text,
    request_id text,
    CONSTRAINT audit_log_action_check CHECK ((action = ANY (ARRAY['create'::text, 'update'::text, 'delete'::text]))),
    CONSTRAINT audit_log_target_kind_check CHECK ((target_kind = ANY (ARRAY['segment'::text, 'layer'::text, 'import'::text])))
);

--
-- Name: audit_log_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

ALTER TABLE public.audit_log ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.audit_log_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: cache_invalidations; Type: TABLE; Schema: public; Owner: -
--

CREATE UNLOGGED TABLE public.cache_invalidations (
    user_ids bigint[],
    at timestamp with time zone DEFAULT clock_timestamp() NOT NULL
);
ALTER TABLE ONLY public.cache_invalidations ALTER COLUMN user_ids SET STORAGE EXTERNAL;

--
-- Name: event_relay; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.event_relay (
    singleton boolean DEFAULT true NOT NULL,
    at timestamp with time zone NOT NULL,
    id bigint NOT NULL,
    CONSTRAINT event_relay_singleton_check CHECK (singleton)
);

--
-- Name: idempotency_keys; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.idempotency_keys (
    caller text NOT NULL,
    key text NOT NULL,
    fingerprint bytea NOT NULL,
    method text NOT NULL,
    path text NOT NULL,
    status smallint NOT NULL,
    headers jsonb NOT NULL,
    body bytea NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT idempotency_keys_fingerprint_check CHECK ((octet_length(fingerprint) = 32)),
    CONSTRAINT idempotency_keys_key_check CHECK (((octet_length(key) >= 1) AND (octet_length(key) <= 255)))
);

--
-- Name: import_chunks; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.import_chunks (
    import_id bigint NOT NULL,
    last_id bigint NOT NULL,
    ids bigint[] NOT NULL
);

--
-- Name: import_uploads; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.import_uploads (
    import_id bigint NOT NULL,
    seq integer NOT NULL,
    ids bigint[] NOT NULL
);

--
-- Name: imports; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.imports (
    id bigint NOT NULL,
    segment_id bigint,
    segment_slug text NOT NULL COLLATE pg_catalog."C",
    mode text NOT NULL,
    expires_at timestamp with time zone,
    status text DEFAULT 'pending'::text NOT NULL,
    listed bigint NOT NULL,
    received bigint,
    processed bigint DEFAULT 0 NOT NULL,
    added bigint DEFAULT 0 NOT NULL,
    removed bigint DEFAULT 0 NOT NULL,
    unchanged bigint DEFAULT 0 NOT NULL,
    conflicts bigint DEFAULT 0 NOT NULL,
    conflict_ids bigint[] DEFAULT '{}'::bigint[] NOT NULL,
    cursor bigint DEFAULT 0 NOT NULL,
    error text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    actor text,
    request_id text,
    CONSTRAINT imports_mode_check CHECK ((mode = ANY (ARRAY['add'::text, 'remove'::text, 'replace'::text]))),
    CONSTRAINT imports_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'running'::text, 'done'::text, 'failed'::text])))
);

--
-- Name: imports_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

ALTER TABLE public.imports ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.imports_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: layers; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.layers (
    id bigint NOT NULL,
    slug text NOT NULL COLLATE pg_catalog."C",
    description text DEFAULT ''::text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT layers_slug_format CHECK ((slug ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$'::text))
);

--
-- Name: layers_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

ALTER TABLE public.layers ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.layers_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: member_count_deltas; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.member_count_deltas (
    segment_id bigint NOT NULL,
    n bigint NOT NULL
);

--
-- Name: member_counts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.member_counts (
    segment_id bigint NOT NULL,
    n bigint NOT NULL
);

--
-- Name: membership_expiry_changes; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.membership_expiry_changes (
    id bigint NOT NULL,
    user_id bigint NOT NULL,
    segment_id bigint NOT NULL,
    at timestamp with time zone NOT NULL,
    expires_at timestamp with time zone
);

--
-- Name: membership_expiry_changes_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

ALTER TABLE public.membership_expiry_changes ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.membership_expiry_changes_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: membership_history; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.membership_history (
    id bigint NOT NULL,
    user_id bigint NOT NULL,
    segment_id bigint NOT NULL,
    slug text NOT NULL COLLATE pg_catalog."C",
    operation text NOT NULL,
    reason text NOT NULL,
    at timestamp with time zone NOT NULL,
    expires_at timestamp with time zone,
    CONSTRAINT membership_history_operation_check CHECK ((operation = ANY (ARRAY['add'::text, 'remove'::text]))),
    CONSTRAINT membership_history_reason_check CHECK ((reason = ANY (ARRAY['manual'::text, 'ttl'::text, 'auto'::text, 'segment_deleted'::text, 'import'::text])))
);

--
-- Name: membership_history_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

ALTER TABLE public.membership_history ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.membership_history_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: memberships; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.memberships (
    user_id bigint NOT NULL,
    segment_id bigint NOT NULL,
    source text DEFAULT 'manual'::text NOT NULL,
    added_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    expires_at timestamp with time zone,
    layer_id bigint,
    CONSTRAINT memberships_not_born_expired CHECK (((expires_at IS NULL) OR (expires_at > added_at))),
    CONSTRAINT memberships_source_check CHECK ((source = ANY (ARRAY['manual'::text, 'auto'::text])))
);

--
-- Name: rollout_batches; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.rollout_batches (
    segment_id bigint NOT NULL,
    first_user bigint NOT NULL,
    last_user bigint NOT NULL,
    done boolean DEFAULT false NOT NULL
);

--
-- Name: segment_opt_outs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.segment_opt_outs (
    segment_id bigint NOT NULL,
    user_id bigint NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: segment_rollout_ids; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.segment_rollout_ids
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

--
-- Name: segments; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.segments (
    id bigint NOT NULL,
    slug text NOT NULL COLLATE pg_catalog."C",
    description text DEFAULT ''::text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    auto_percent numeric(5,2),
    population_seq bigint,
    rollout_status text,
    rollout_total bigint,
    rollout_assigned bigint DEFAULT 0 NOT NULL,
    rollout_threshold_hash bigint,
    rollout_threshold_user bigint,
    delete_at timestamp with time zone,
    rollout_id bigint,
    layer_id bigint,
    layer_buckets int4multirange,
    auto_percent_schedule jsonb DEFAULT '[]'::jsonb NOT NULL,
    next_step_at timestamp with time zone,
    CONSTRAINT segments_auto_has_rollout CHECK (((auto_percent IS NULL) = (rollout_status IS NULL))),
    CONSTRAINT segments_auto_percent_check CHECK (((auto_percent >= (0)::numeric) AND (auto_percent <= (100)::numeric))),
    CONSTRAINT segments_auto_percent_schedule_check CHECK ((jsonb_typeof(auto_percent_schedule) = 'array'::text)),
    CONSTRAINT segments_layer_buckets CHECK (((layer_buckets IS NULL) OR ((layer_id IS NOT NULL) AND (layer_buckets <@ int4multirange(int4range(0, 10000)))))),
    CONSTRAINT segments_rollout_status_check CHECK ((rollout_status = ANY (ARRAY['pending'::text, 'running'::text, 'done'::text, 'failed'::text]))),
    CONSTRAINT segments_slug_format CHECK ((slug ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$'::text))
);

--
-- Name: segments_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

ALTER TABLE public.segments ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.segments_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: users; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.users (
    id bigint NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    seq bigint NOT NULL,
    CONSTRAINT users_id_check CHECK ((id > 0))
);

--
-- Name: users_seq_seq; Type: SEQUENCE; Schema: public; Owner: -
--

ALTER TABLE public.users ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.users_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: audit_log audit_log_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_log
    ADD CONSTRAINT audit_log_pkey PRIMARY KEY (id);

--
-- Name: event_relay event_relay_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.event_relay
    ADD CONSTRAINT event_relay_pkey PRIMARY KEY (singleton);

--
-- Name: idempotency_keys idempotency_keys_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.idempotency_keys
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (caller, key);

--
-- Name: import_chunks import_chunks_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.import_chunks
    ADD CONSTRAINT import_chunks_pkey PRIMARY KEY (import_id, last_id);

--
-- Name: import_uploads import_uploads_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.import_uploads
    ADD CONSTRAINT import_uploads_pkey PRIMARY KEY (import_id, seq);

--
-- Name: imports imports_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.imports
    ADD CONSTRAINT imports_pkey PRIMARY KEY (id);

--
-- Name: layers layers_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.layers
    ADD CONSTRAINT layers_pkey PRIMARY KEY (id);

--
-- Name: layers layers_slug_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.layers
    ADD CONSTRAINT layers_slug_key UNIQUE (slug);

--
-- Name: member_counts member_counts_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.member_counts
    ADD CONSTRAINT member_counts_pkey PRIMARY KEY (segment_id);

--
-- Name: membership_expiry_changes membership_expiry_changes_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.membership_expiry_changes
    ADD CONSTRAINT membership_expiry_changes_pkey PRIMARY KEY (user_id, segment_id, at, id);

--
-- Name: membership_history membership_history_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.membership_history
    ADD CONSTRAINT membership_history_pkey PRIMARY KEY (user_id, at, id);

--
-- Name: memberships memberships_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.memberships
    ADD CONSTRAINT memberships_pkey PRIMARY KEY (user_id, segment_id);

--
-- Name: rollout_batches rollout_batches_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rollout_batches
    ADD CONSTRAINT rollout_batches_pkey PRIMARY KEY (segment_id, first_user);

--
-- Name: segment_opt_outs segment_opt_outs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.segment_opt_outs
    ADD CONSTRAINT segment_opt_outs_pkey PRIMARY KEY (segment_id, user_id);

--
-- Name: segments segments_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.segments
    ADD CONSTRAINT segments_pkey PRIMARY KEY (id);

--
-- Name: segments segments_slug_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.segments
    ADD CONSTRAINT segments_slug_key UNIQUE (slug);

--
-- Name: users users_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);

--
-- Name: audit_log_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_log_at_idx ON public.audit_log USING btree (at);

--
-- Name: audit_log_target_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_log_target_idx ON public.audit_log USING btree (target_slug, id);

--
-- Name: idempotency_keys_created_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idempotency_keys_created_at_idx ON public.idempotency_keys USING btree (created_at);

--
-- Name: imports_segment_unfinished_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX imports_segment_unfinished_idx ON public.imports USING btree (segment_id, id) WHERE (status = ANY (ARRAY['pending'::text, 'running'::text]));

--
-- Name: member_count_deltas_segment_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX member_count_deltas_segment_idx ON public.member_count_deltas USING btree (segment_id);

--
-- Name: membership_history_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX membership_history_at_idx ON public.membership_history USING btree (at, id);

--
-- Name: membership_history_user_segment_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX membership_history_user_segment_idx ON public.membership_history USING btree (user_id, segment_id, at, id);

--
-- Name: memberships_expiry_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX memberships_expiry_idx ON public.memberships USING btree (expires_at) WHERE (expires_at IS NOT NULL);

--
-- Name: memberships_one_per_layer; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX memberships_one_per_layer ON public.memberships USING btree (user_id, layer_id) WHERE (layer_id IS NOT NULL);

--
-- Name: memberships_segment_expiry_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX memberships_segment_expiry_idx ON public.memberships USING btree (segment_id, expires_at) WHERE (expires_at IS NOT NULL);

--
-- Name: memberships_segment_user_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX memberships_segment_user_idx ON public.memberships USING btree (segment_id, user_id) INCLUDE (expires_at);

--
-- Name: segments_delete_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX segments_delete_at_idx ON public.segments USING btree (delete_at) WHERE (delete_at IS NOT NULL);

--
-- Name: segments_layer_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX segments_layer_idx ON public.segments USING btree (layer_id) WHERE (layer_id IS NOT NULL);

--
-- Name: segments_next_step_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX segments_next_step_idx ON public.segments USING btree (next_step_at) WHERE (next_step_at IS NOT NULL);

--
-- Name: imports imports_audit; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER imports_audit AFTER INSERT ON public.imports FOR EACH ROW EXECUTE FUNCTION public.audit_import();

--
-- Name: imports imports_audit_end; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER imports_audit_end AFTER UPDATE ON public.imports FOR EACH ROW WHEN (((new.status = ANY (ARRAY['done'::text, 'failed'::text])) AND (old.status IS DISTINCT FROM new.status))) EXECUTE FUNCTION public.audit_import();

--
-- Name: layers layers_audit; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER layers_audit AFTER INSERT OR DELETE ON public.layers FOR EACH ROW EXECUTE FUNCTION public.audit_layer();

--
-- Name: memberships memberships_cache_update; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER memberships_cache_update AFTER UPDATE ON public.memberships REFERENCING OLD TABLE AS before NEW TABLE AS updated FOR EACH STATEMENT EXECUTE FUNCTION public.memberships_record_updated();

--
-- Name: memberships memberships_count_delete; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER memberships_count_delete AFTER DELETE ON public.memberships REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION public.memberships_count_removed();

--
-- Name: memberships memberships_count_insert; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER memberships_count_insert AFTER INSERT ON public.memberships REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION public.memberships_count_added();

--
-- Name: memberships memberships_history_delete; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER memberships_history_delete AFTER DELETE ON public.memberships REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION public.memberships_record_removed();

--
-- Name: memberships memberships_history_insert; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER memberships_history_insert AFTER INSERT ON public.memberships REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION public.memberships_record_added();

--
-- Name: memberships memberships_layer_insert; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER memberships_layer_insert AFTER INSERT ON public.memberships REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION public.memberships_check_layer();

--
-- Name: memberships memberships_layer_update; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER memberships_layer_update BEFORE UPDATE OF layer_id ON public.memberships FOR EACH ROW WHEN ((old.layer_id IS DISTINCT FROM new.layer_id)) EXECUTE FUNCTION public.memberships_forbid_rekey();

--
-- Name: memberships memberships_rekey; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER memberships_rekey BEFORE UPDATE OF user_id, segment_id ON public.memberships FOR EACH ROW WHEN (((old.user_id <> new.user_id) OR (old.segment_id <> new.segment_id))) EXECUTE FUNCTION public.memberships_forbid_rekey();

--
-- Name: memberships memberships_truncate; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER memberships_truncate BEFORE TRUNCATE ON public.memberships FOR EACH STATEMENT EXECUTE FUNCTION public.memberships_forbid_truncate();

--
-- Name: segments segments_audit; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER segments_audit AFTER INSERT OR DELETE ON public.segments FOR EACH ROW EXECUTE FUNCTION public.audit_segment();

--
-- Name: segments segments_audit_update; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER segments_audit_update AFTER UPDATE ON public.segments FOR EACH ROW WHEN (((old.description IS DISTINCT FROM new.description) OR (old.auto_percent IS DISTINCT FROM new.auto_percent) OR (old.delete_at IS DISTINCT FROM new.delete_at) OR (old.auto_percent_schedule IS DISTINCT FROM new.auto_percent_schedule))) EXECUTE FUNCTION public.audit_segment();

--
-- Name: import_chunks import_chunks_import_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.import_chunks
    ADD CONSTRAINT import_chunks_import_id_fkey FOREIGN KEY (import_id) REFERENCES public.imports(id) ON DELETE CASCADE;

--
-- Name: import_uploads import_uploads_import_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.import_uploads
    ADD CONSTRAINT import_uploads_import_id_fkey FOREIGN KEY (import_id) REFERENCES public.imports(id) ON DELETE CASCADE;

--
-- Name: imports imports_segment_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.imports
    ADD CONSTRAINT imports_segment_id_fkey FOREIGN KEY (segment_id) REFERENCES public.segments(id) ON DELETE SET NULL;

--
-- Name: member_counts member_counts_segment_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.member_counts
    ADD CONSTRAINT member_counts_segment_id_fkey FOREIGN KEY (segment_id) REFERENCES public.segments(id) ON DELETE CASCADE;

--
-- Name: rollout_batches rollout_batches_segment_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rollout_batches
    ADD CONSTRAINT rollout_batches_segment_id_fkey FOREIGN KEY (segment_id) REFERENCES public.segments(id) ON DELETE CASCADE;

--
-- Name: segment_opt_outs segment_opt_outs_segment_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.segment_opt_outs
    ADD CONSTRAINT segment_opt_outs_segment_id_fkey FOREIGN KEY (segment_id) REFERENCES public.segments(id) ON DELETE CASCADE;

--
-- Name: segments segments_layer_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.segments
    ADD CONSTRAINT segments_layer_id_fkey FOREIGN KEY (layer_id) REFERENCES public.layers(id);

--
-- PostgreSQL database dump complete
--
