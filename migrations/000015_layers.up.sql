-- Layers: segments that exclude each other. No user holds two segments of
-- one layer at any moment, whatever gave them; the database itself
-- guarantees it: every membership carries its segment's layer (layer_id),
-- unique per user, and a trigger refuses a membership whose layer is not
-- its segment's.
CREATE TABLE layers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug        text COLLATE "C" NOT NULL,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT layers_slug_key UNIQUE (slug),
    CONSTRAINT layers_slug_format CHECK (slug ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$')
);

-- A segment's layer is fixed when it is created. A percent segment of a
-- layer owns the buckets layer_buckets (0 to 9999: auto_percent × 100 of
-- them); a layer with segments cannot be deleted.
ALTER TABLE segments
    ADD COLUMN layer_id bigint REFERENCES layers (id),
    ADD COLUMN layer_buckets int4multirange,
    ADD CONSTRAINT segments_layer_buckets CHECK (layer_buckets IS NULL OR (layer_id IS NOT NULL AND layer_buckets <@ int4multirange(int4range(0, 10000))));
CREATE INDEX segments_layer_idx ON segments (layer_id) WHERE layer_id IS NOT NULL;

ALTER TABLE memberships ADD COLUMN layer_id bigint;
CREATE UNIQUE INDEX memberships_one_per_layer ON memberships (user_id, layer_id) WHERE layer_id IS NOT NULL;

-- layer_hash is the documented, stable hash of a user for a layer: the
-- first 4 bytes of SHA-256 over "layer:<layer slug>:<user id>", big-endian
-- (domain.LayerHash); layer_bucket maps it onto 10,000 buckets.
CREATE FUNCTION layer_hash(p_slug text, p_user_id bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT segment_hash('layer:' || p_slug, p_user_id)
$$;

CREATE FUNCTION layer_bucket(p_slug text, p_user_id bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ((layer_hash(p_slug, p_user_id) * 10000) >> 32)::integer
$$;

-- A membership's layer must be its segment's: every writer sets it, and
-- this refuses a statement that got it wrong, so the unique index above
-- holds for every segment of a layer.
CREATE FUNCTION memberships_check_layer() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM added a JOIN segments s ON s.id = a.segment_id
               WHERE a.layer_id IS DISTINCT FROM s.layer_id) THEN
        RAISE EXCEPTION 'a membership''s layer_id must be its segment''s'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER memberships_layer_insert
    AFTER INSERT ON memberships
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION memberships_check_layer();

CREATE TRIGGER memberships_layer_update
    BEFORE UPDATE OF layer_id ON memberships
    FOR EACH ROW
    WHEN (OLD.layer_id IS DISTINCT FROM NEW.layer_id)
    EXECUTE FUNCTION memberships_forbid_rekey();
