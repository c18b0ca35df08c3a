-- ?at= looks up the last expiry change of one membership (user, segment)
-- at or before an instant: keyed by (user_id, segment_id, at, id), that is
-- one index probe, whatever the user's other segments did.
ALTER TABLE membership_expiry_changes
    DROP CONSTRAINT membership_expiry_changes_pkey,
    ADD CONSTRAINT membership_expiry_changes_pkey PRIMARY KEY (user_id, segment_id, at, id);
