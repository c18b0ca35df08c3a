ALTER TABLE segments DROP COLUMN rollout_id;
DROP SEQUENCE segment_rollout_ids;
