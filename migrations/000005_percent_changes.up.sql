-- Explicit removals of a percent segment: a user who removed it (through a
-- change's remove list) has opted out, and no rollout gives it back; a
-- manual add of it clears the opt-out. Changes of a segment's percent draw
-- from the users who have not opted out.
CREATE TABLE segment_opt_outs (
    segment_id bigint NOT NULL REFERENCES segments (id) ON DELETE CASCADE,
    user_id    bigint NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (segment_id, user_id)
);
