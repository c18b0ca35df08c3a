CREATE INDEX memberships_segment_idx ON memberships (segment_id, expires_at);
DROP INDEX memberships_segment_user_idx;
