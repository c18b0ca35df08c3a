-- Fails while history holds import events: that history cannot be kept
-- under the old reasons.
DROP TABLE import_chunks;
DROP TABLE import_uploads;
DROP TABLE imports;
ALTER TABLE membership_history DROP CONSTRAINT membership_history_reason_check;
ALTER TABLE membership_history ADD CONSTRAINT membership_history_reason_check
    CHECK (reason IN ('manual', 'ttl', 'auto', 'segment_deleted'));
