-- The audit log (who changed what) and percent schedules.
--
-- Every administrative change writes its entry from a trigger, in the
-- transaction of the change: an entry exists iff the change committed. Who
-- made it comes from the transaction's setting segments.audit, a JSON
-- object {actor, request_id[, error]} that the service sets with
-- set_config(..., true) before it writes (internal/postgres/audit.go); a
-- change of a segment or a layer without it fails, so no path can change
-- them unrecorded. By hand: SET LOCAL segments.audit = '{"actor": "ops:alice"}'.

CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    -- The token's sub; NULL when authentication is off; 'schedule' for
    -- what the service does at a scheduled time.
    actor       text,
    action      text NOT NULL CHECK (action IN ('create', 'update', 'delete')),
    target_kind text NOT NULL CHECK (target_kind IN ('segment', 'layer', 'import')),
    -- The segment's or the layer's slug; an import's segment's.
    target_slug text COLLATE "C" NOT NULL,
    -- {field: {from, to}} as the API shows the fields.
    changes     jsonb NOT NULL,
    -- A problem type for a scheduled step that could not apply; an
    -- import's error.
    error       text,
    request_id  text
);
CREATE INDEX audit_log_target_idx ON audit_log (target_slug, id);
CREATE INDEX audit_log_at_idx ON audit_log (at);

-- A percent segment's plan: [{at, auto_percent}], at strictly increasing,
-- as the API shows it; next_step_at is its first step's at (the sweep's
-- index).
ALTER TABLE segments
    ADD COLUMN auto_percent_schedule jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(auto_percent_schedule) = 'array'),
    ADD COLUMN next_step_at timestamptz;
CREATE INDEX segments_next_step_idx ON segments (next_step_at) WHERE next_step_at IS NOT NULL;

-- Who uploaded an import: its start and its end are recorded under the
-- uploader's name and request.
ALTER TABLE imports ADD COLUMN actor text, ADD COLUMN request_id text;

-- audit_context returns the transaction's segments.audit, or fails.
CREATE FUNCTION audit_context() RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
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

-- audit_time is t as the API writes instants (RFC 3339 in UTC, trailing
-- zeros of the fraction dropped).
CREATE FUNCTION audit_time(t timestamptz) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN t IS NULL THEN 'null'::jsonb
           ELSE to_jsonb(rtrim(rtrim(to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '0'), '.') || 'Z') END
$$;

-- audit_change is {from, to}, or nothing when they are equal.
CREATE FUNCTION audit_change(name text, old jsonb, new jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN old IS NOT DISTINCT FROM new THEN '{}'::jsonb
           ELSE jsonb_build_object(name, jsonb_build_object('from', coalesce(old, 'null'), 'to', coalesce(new, 'null'))) END
$$;

CREATE FUNCTION audit_segment() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER segments_audit AFTER INSERT OR DELETE ON segments
    FOR EACH ROW EXECUTE FUNCTION audit_segment();
-- Rollouts update their progress on the segment's row: only a change of
-- what an analyst sets is recorded.
CREATE TRIGGER segments_audit_update AFTER UPDATE ON segments
    FOR EACH ROW WHEN (OLD.description IS DISTINCT FROM NEW.description
                    OR OLD.auto_percent IS DISTINCT FROM NEW.auto_percent
                    OR OLD.delete_at IS DISTINCT FROM NEW.delete_at
                    OR OLD.auto_percent_schedule IS DISTINCT FROM NEW.auto_percent_schedule)
    EXECUTE FUNCTION audit_segment();

CREATE FUNCTION audit_layer() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER layers_audit AFTER INSERT OR DELETE ON layers
    FOR EACH ROW EXECUTE FUNCTION audit_layer();

-- An import's start (its row) and its end (done or failed), under the
-- uploader's name: the end is the worker's, but the change is theirs.
CREATE FUNCTION audit_import() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER imports_audit AFTER INSERT ON imports
    FOR EACH ROW EXECUTE FUNCTION audit_import();
CREATE TRIGGER imports_audit_end AFTER UPDATE ON imports
    FOR EACH ROW WHEN (NEW.status IN ('done', 'failed') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION audit_import();
