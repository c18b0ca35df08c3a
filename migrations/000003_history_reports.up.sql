-- Month reports of all users read history in time order; the primary key
-- (user_id, at, id) serves one user's reports.
CREATE INDEX membership_history_at_idx ON membership_history (at, id);
