-- Imports: a list of user ids into or out of a segment, applied in the
-- background in batches, exactly once (internal/postgres/imports.go).
-- The new reason. NOT VALID: history is large, and every row it holds has
-- one of the old reasons; migration 17 validates it without blocking
-- writes.
ALTER TABLE membership_history DROP CONSTRAINT membership_history_reason_check;
ALTER TABLE membership_history ADD CONSTRAINT membership_history_reason_check
    CHECK (reason IN ('manual', 'ttl', 'auto', 'segment_deleted', 'import')) NOT VALID;

CREATE TABLE imports (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- NULL once the segment is deleted (the import then failed).
    segment_id    bigint REFERENCES segments (id) ON DELETE SET NULL,
    segment_slug  text COLLATE "C" NOT NULL,
    mode          text NOT NULL CHECK (mode IN ('add', 'remove', 'replace')),
    -- The expiry every listed user's membership gets (add, replace).
    expires_at    timestamptz,
    status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    -- Ids as listed (repeats included); the distinct ones, once the list
    -- is sorted (NULL until then); those applied so far, and how.
    listed        bigint NOT NULL,
    received      bigint,
    processed     bigint NOT NULL DEFAULT 0,
    added         bigint NOT NULL DEFAULT 0,
    removed       bigint NOT NULL DEFAULT 0,
    unchanged     bigint NOT NULL DEFAULT 0,
    conflicts     bigint NOT NULL DEFAULT 0,
    -- The first 100 ids skipped for holding another segment of the layer.
    conflict_ids  bigint[] NOT NULL DEFAULT '{}',
    -- The last user id applied: each batch moves it, in the transaction of
    -- its effects, so a batch is applied once whatever stops a worker.
    cursor        bigint NOT NULL DEFAULT 0,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX imports_segment_unfinished_idx ON imports (segment_id, id) WHERE status IN ('pending', 'running');

-- An import's list as it was uploaded: ids in the order listed, 10,000 a
-- row (an upload of 10 million ids writes 1,000 rows, not 10 million).
-- The worker sorts them into import_chunks and deletes them.
CREATE TABLE import_uploads (
    import_id bigint NOT NULL REFERENCES imports (id) ON DELETE CASCADE,
    seq       integer NOT NULL,
    ids       bigint[] NOT NULL,
    PRIMARY KEY (import_id, seq)
);

-- An import's distinct ids in order, 10,000 a row, each row named by its
-- last id: the batches read the one or two rows past the cursor.
CREATE TABLE import_chunks (
    import_id bigint NOT NULL REFERENCES imports (id) ON DELETE CASCADE,
    last_id   bigint NOT NULL,
    ids       bigint[] NOT NULL,
    PRIMARY KEY (import_id, last_id)
);
