DROP INDEX IF EXISTS membership_history_at_idx;
