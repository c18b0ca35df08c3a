-- A user's history in one segment, newest first, without reading the
-- user's other segments: explain's last events, and ?at='s last event per
-- segment (internal/postgres/support.go). Without it both read every event
-- of the user, which a caller with write scope can grow without bound.
-- Built without blocking writes (the statement must be alone in its
-- migration, outside a transaction).
CREATE INDEX CONCURRENTLY IF NOT EXISTS membership_history_user_segment_idx
    ON membership_history (user_id, segment_id, at, id);
