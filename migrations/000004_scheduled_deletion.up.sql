-- A segment may be scheduled for deletion: at delete_at the worker deletes
-- it exactly as DELETE /segments/{slug} does (a task due then, and a
-- periodic sweep of what is due behind it).
ALTER TABLE segments ADD COLUMN delete_at timestamptz;

-- The sweep's search for what is due.
CREATE INDEX segments_delete_at_idx ON segments (delete_at) WHERE delete_at IS NOT NULL;
