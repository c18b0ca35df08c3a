-- Each rollout (a percent segment created, or its share changed) gets an
-- id of its own. An API replica that serves a rollout as done for the first
-- time drops its read cache before answering, so that its reads of the
-- users the rollout touched reflect it at once, even if the rollout's
-- invalidations have not reached it yet (internal/httpapi, "done").
CREATE SEQUENCE segment_rollout_ids;
ALTER TABLE segments ADD COLUMN rollout_id bigint;
UPDATE segments SET rollout_id = nextval('segment_rollout_ids') WHERE auto_percent IS NOT NULL;
