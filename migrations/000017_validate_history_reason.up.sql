-- Validates the reason check migration 16 added NOT VALID: a scan of
-- history under a lock that lets writes through.
ALTER TABLE membership_history VALIDATE CONSTRAINT membership_history_reason_check;
