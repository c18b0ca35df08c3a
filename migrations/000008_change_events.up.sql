-- Change events (README, "Change events"). The worker publishes every
-- history event to a Redis Stream. membership_history is the outbox: the
-- triggers write it in the transaction that changes the memberships, so an
-- event exists exactly when its change committed. The relay reads it in
-- (at, id) order through membership_history_at_idx and keeps its place
-- here, moved only after the stream has taken what it read.
--
-- Why a cursor is safe here although rows commit out of order: the relay
-- reads only below a horizon that no later commit can go under — the
-- start of the oldest transaction running in this database (every at a
-- transaction writes is a clock reading taken inside it) and the earliest
-- expiry of a membership still present (a ttl removal is recorded at the
-- expiry, which may be long past when some writer removes it). Everything
-- below the horizon has committed, so reading past it never skips a row
-- that commits later (internal/postgres/events.go).
CREATE TABLE event_relay (
    -- One row.
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The last event published: its at and id.
    at timestamptz NOT NULL,
    id bigint NOT NULL
);

-- Events from now on: history written before this migration is not
-- published (the history API and reports have it).
INSERT INTO event_relay (at, id) VALUES (now(), 0);
