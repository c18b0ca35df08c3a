DROP INDEX segments_delete_at_idx;
ALTER TABLE segments DROP COLUMN delete_at;
