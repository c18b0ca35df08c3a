-- Responses of requests sent with an Idempotency-Key, stored in the
-- transaction of the request's effect, so that a retry with the same key
-- gets the same response and applies nothing again.
CREATE TABLE idempotency_keys (
    -- caller is the token's subject ('' with authentication off): keys are
    -- per caller.
    caller      text        NOT NULL,
    key         text        NOT NULL CHECK (octet_length(key) BETWEEN 1 AND 255),
    -- fingerprint is SHA-256 of the request's method, path and query,
    -- and body; method and path say what the key was used for.
    fingerprint bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    method      text        NOT NULL,
    path        text        NOT NULL,
    status      smallint    NOT NULL,
    headers     jsonb       NOT NULL,
    body        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);

-- The worker's sweep deletes keys past IDEMPOTENCY_TTL, oldest first.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
