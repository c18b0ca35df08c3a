-- A segment's members in user id order (GET /segments/{slug}/members pages
-- by user id). It replaces the (segment_id, expires_at) index and serves
-- what that one did: member counts (index-only, expires_at included) and
-- segment deletion.
CREATE INDEX memberships_segment_user_idx ON memberships (segment_id, user_id) INCLUDE (expires_at);
DROP INDEX memberships_segment_idx;
