-- member_count without counting: each statement that adds or removes
-- memberships appends, per segment it touched, its net change to
-- member_count_deltas (insert only: concurrent writers of one segment
-- never wait for each other), and the worker folds the deltas into
-- member_counts every second. A segment's count of active memberships is
-- then its folded count, plus the deltas not folded yet, minus its
-- memberships that have expired but are not removed yet (found through
-- memberships_segment_expiry_idx: normally a handful, the sweep removes
-- them): segment_member_count().
CREATE TABLE member_counts (
    segment_id bigint PRIMARY KEY REFERENCES segments (id) ON DELETE CASCADE,
    n          bigint NOT NULL
);

-- No foreign key: it would cost every write a lookup; deltas of a deleted
-- segment are dropped when they are folded.
CREATE TABLE member_count_deltas (
    segment_id bigint NOT NULL,
    n          bigint NOT NULL
);
CREATE INDEX member_count_deltas_segment_idx ON member_count_deltas (segment_id);

CREATE INDEX memberships_segment_expiry_idx ON memberships (segment_id, expires_at) WHERE expires_at IS NOT NULL;

INSERT INTO member_counts (segment_id, n)
SELECT s.id, (SELECT count(*) FROM memberships m WHERE m.segment_id = s.id) FROM segments s;

-- queue_member_count_change records that the memberships of the segments
-- p_segment_ids (one element per membership) appeared (p_sign 1) or
-- disappeared (-1).
CREATE FUNCTION queue_member_count_change(p_segment_ids bigint[], p_sign integer) RETURNS void
LANGUAGE sql VOLATILE AS $$
    INSERT INTO member_count_deltas (segment_id, n)
    SELECT id, p_sign * count(*) FROM unnest(p_segment_ids) AS t(id) GROUP BY id
$$;

CREATE FUNCTION memberships_count_added() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM queue_member_count_change(ARRAY(SELECT segment_id FROM added), 1);
    RETURN NULL;
END
$$;

CREATE FUNCTION memberships_count_removed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM queue_member_count_change(ARRAY(SELECT segment_id FROM removed), -1);
    RETURN NULL;
END
$$;

CREATE TRIGGER memberships_count_insert
    AFTER INSERT ON memberships
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION memberships_count_added();

CREATE TRIGGER memberships_count_delete
    AFTER DELETE ON memberships
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION memberships_count_removed();

-- segment_member_count is the segment's count of active memberships, in
-- the caller's snapshot.
CREATE FUNCTION segment_member_count(p_segment_id bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT c.n FROM member_counts c WHERE c.segment_id = p_segment_id), 0)
         + coalesce((SELECT sum(d.n) FROM member_count_deltas d WHERE d.segment_id = p_segment_id), 0)
         - (SELECT count(*) FROM memberships m
            WHERE m.segment_id = p_segment_id AND m.expires_at IS NOT NULL AND m.expires_at <= now())
$$;
