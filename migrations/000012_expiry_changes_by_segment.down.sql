ALTER TABLE membership_expiry_changes
    DROP CONSTRAINT membership_expiry_changes_pkey,
    ADD CONSTRAINT membership_expiry_changes_pkey PRIMARY KEY (user_id, at, id);
