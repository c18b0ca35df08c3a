DROP FUNCTION segment_member_count(bigint);
DROP TRIGGER memberships_count_delete ON memberships;
DROP TRIGGER memberships_count_insert ON memberships;
DROP FUNCTION memberships_count_removed();
DROP FUNCTION memberships_count_added();
DROP FUNCTION queue_member_count_change(bigint[], integer);
DROP INDEX memberships_segment_expiry_idx;
DROP TABLE member_count_deltas;
DROP TABLE member_counts;
