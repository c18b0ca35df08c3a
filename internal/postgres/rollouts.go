package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
)

// RolloutRepo runs the rollouts of percent segments.
type RolloutRepo struct {
	pool *pgxpool.Pool
	// sessions holds the claims' connections (a session advisory lock
	// each): the server itself, not a pooler in transaction mode.
	sessions *pgxpool.Pool
	rec      Recorder
}

// NewRolloutRepo returns a RolloutRepo on pool that reports the
// memberships it creates to rec.
func NewRolloutRepo(pool *pgxpool.Pool, rec Recorder) *RolloutRepo {
	return &RolloutRepo{pool: pool, sessions: pool, rec: rec}
}

// WithSessions makes the repo take its claims on sessions (a pool of
// direct connections) and returns it.
func (r *RolloutRepo) WithSessions(sessions *pgxpool.Pool) *RolloutRepo {
	r.sessions = sessions
	return r
}

func segmentGone(id int64) error { return domain.NotFoundf("segment %d does not exist", id) }

// ClaimRollout makes the caller the one runner of the segment's rollout,
// if nobody is: it takes a session advisory lock (key −segmentID, apart
// from the positive registryLock) on a connection it keeps until release
// is called. The lock dies with the connection, so a runner that was
// killed frees its rollout at once. ok is false if another runner holds it.
func (r *RolloutRepo) ClaimRollout(ctx context.Context, segmentID int64) (release func(), ok bool, err error) {
	conn, err := r.sessions.Acquire(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("claim rollout of segment %d: %w", segmentID, dbError(err))
	}
	const claim = `SELECT pg_try_advisory_lock($1)`
	if err := conn.QueryRow(ctx, claim, -segmentID).Scan(&ok); err != nil || !ok {
		conn.Release()
		if err != nil {
			err = fmt.Errorf("claim rollout of segment %d: %w", segmentID, dbError(err))
		}
		return nil, false, err
	}
	return func() {
		const unclaim = `SELECT pg_advisory_unlock($1)`
		if _, err := conn.Exec(context.WithoutCancel(ctx), unclaim, -segmentID); err != nil {
			// The lock must not outlive the claim on a pooled connection.
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
		conn.Release()
	}, true, nil
}

// PrepareRollout turns a pending rollout into a running one: it reads the
// users registered up to population_seq in one statement, chooses the line
// — the (segment_hash, id) of the last of the round(N·p/100) lowest among
// the N who have not opted out — and splits the registered users into
// batches of batchSize by id. A failed rollout is taken up again
// where it stopped (running if it was prepared, else pending). A running or
// done rollout is returned as it is. It returns domain.ErrNotFound if the
// segment is gone.
func (r *RolloutRepo) PrepareRollout(ctx context.Context, segmentID int64, batchSize int) (domain.Rollout, error) {
	var ro domain.Rollout
	err := withTx(ctx, r.pool, func(tx pgx.Tx) error {
		lock := `
			SELECT slug, population_seq, rollout_status, rollout_assigned, coalesce(rollout_total, 0),
			       (auto_percent * 100)::integer,
			       EXISTS (SELECT FROM memberships m WHERE m.segment_id = s.id AND m.source = 'auto'),
			       coalesce((SELECT l.slug FROM layers l WHERE l.id = s.layer_id), ''), ` + rangesOf("s.layer_buckets") + `
			FROM segments s
			WHERE id = $1 AND auto_percent IS NOT NULL
			FOR NO KEY UPDATE`
		var (
			slug, layer string
			population  int64
			percent     domain.Percent
			autoHeld    bool
			froms, tos  []int32
		)
		err := tx.QueryRow(ctx, lock, segmentID).Scan(&slug, &population, &ro.Status, &ro.Assigned, &ro.Total, &percent, &autoHeld,
			&layer, &froms, &tos)
		if errors.Is(err, pgx.ErrNoRows) {
			return segmentGone(segmentID)
		}
		if err != nil {
			return err
		}
		if ro.Status == domain.RolloutFailed {
			const revive = `
				UPDATE segments SET rollout_status = CASE WHEN rollout_total IS NULL THEN 'pending' ELSE 'running' END
				WHERE id = $1
				RETURNING rollout_status`
			if err := tx.QueryRow(ctx, revive, segmentID).Scan(&ro.Status); err != nil {
				return fmt.Errorf("take up failed rollout: %w", dbError(err))
			}
		}
		if ro.Status != domain.RolloutPending {
			return nil
		}
		rule := rolloutRule{slug: slug, percent: percent, layer: layer, buckets: bucketRanges(froms, tos)}
		plan, err := planRollout(ctx, tx, segmentID, rule, population, batchSize)
		if err != nil {
			return err
		}
		if plan.chosen == 0 && !autoHeld {
			const done = `UPDATE segments SET rollout_status = 'done', rollout_total = 0 WHERE id = $1`
			ro = domain.Rollout{Status: domain.RolloutDone}
			_, err := tx.Exec(ctx, done, segmentID)
			return err
		}
		const running = `
			UPDATE segments SET rollout_status = 'running', rollout_total = $2, rollout_assigned = 0,
				rollout_threshold_hash = $3, rollout_threshold_user = $4
			WHERE id = $1`
		if _, err := tx.Exec(ctx, running, segmentID, plan.chosen, plan.lineHash, plan.lineUser); err != nil {
			return fmt.Errorf("start rollout: %w", dbError(err))
		}
		const batches = `
			INSERT INTO rollout_batches (segment_id, first_user, last_user)
			SELECT $1, unnest($2::bigint[]), unnest($3::bigint[])`
		if _, err := tx.Exec(ctx, batches, segmentID, plan.first, plan.last); err != nil {
			return fmt.Errorf("split into batches: %w", dbError(err))
		}
		ro = domain.Rollout{Status: domain.RolloutRunning, Total: plan.chosen}
		return nil
	})
	if err != nil && !errors.Is(err, domain.ErrNotFound) {
		return ro, fmt.Errorf("prepare rollout of segment %d: %w", segmentID, dbError(err))
	}
	return ro, err
}

// rolloutRule is who a percent segment goes to. Outside layers, the
// lowest round(N·p/100) (segment_hash, id) of the population; in a layer,
// the users whose layer bucket is in the segment's buckets.
type rolloutRule struct {
	slug    string
	percent domain.Percent
	// layer is the segment's layer's slug; "" outside layers.
	layer   string
	buckets domain.BucketRanges
}

// rolloutPlan is what a rollout fixes when it starts.
type rolloutPlan struct {
	// chosen is how many users the rollout gives the segment: the users
	// whose (segment_hash, id) is at most (lineHash, lineUser); (-1, -1)
	// chooses nobody.
	chosen             int64
	lineHash, lineUser int64
	// first and last bound each batch's user ids.
	first, last []int64
}

// planRollout reads the population of a rollout in id order and plans it.
// The hashing is done here (and in RolloutBatch) rather than by the
// database's segment_hash: the same function (domain.SegmentHash, checked
// against it by TestDatabaseHashMatchesGo) at a tenth of the CPU, and off
// the database server, which the rollout's writes keep busy. The
// population is read once for the count, the line and the batches.
//
// In a layer the plan counts the users whose bucket is in the segment's
// buckets; the batches choose them by the same rule, with no line.
func planRollout(ctx context.Context, tx pgx.Tx, segmentID int64, rule rolloutRule, population int64, batchSize int) (rolloutPlan, error) {
	const read = `
		SELECT u.id, o.user_id IS NOT NULL
		FROM users u
		LEFT JOIN segment_opt_outs o ON o.segment_id = $1 AND o.user_id = u.id
		WHERE u.seq <= $2
		ORDER BY u.id`
	var (
		plan   rolloutPlan
		ids    []int64
		keys   []uint64 // hash<<32 | index into ids: sorted, (hash, id) order
		n      int
		hasher = domain.NewSegmentHasher(rule.slug)
		layer  = domain.NewLayerHasher(rule.layer)
		id     int64
		optOut bool
	)
	rows, _ := tx.Query(ctx, read, segmentID, population)
	_, err := pgx.ForEachRow(rows, []any{&id, &optOut}, func() error {
		if n%batchSize == 0 {
			plan.first = append(plan.first, id)
			plan.last = append(plan.last, id)
		}
		plan.last[len(plan.last)-1] = id
		n++
		switch {
		case optOut:
		case rule.layer != "":
			if rule.buckets.Contains(domain.BucketOf(layer.Hash(id))) {
				plan.chosen++
			}
		default:
			keys = append(keys, uint64(hasher.Hash(id))<<32|uint64(len(ids)))
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		return plan, fmt.Errorf("read population: %w", dbError(err))
	}
	if rule.layer != "" {
		plan.lineHash, plan.lineUser = -1, -1
		return plan, nil
	}
	if len(ids) >= 1<<32 {
		return plan, fmt.Errorf("a population of %d users is more than a rollout can choose from", len(ids))
	}
	// round(N·p/100) with p in hundredths, half up, as the database's round.
	plan.chosen = (2*int64(len(ids))*int64(rule.percent) + int64(domain.MaxPercent)) / (2 * int64(domain.MaxPercent))
	plan.lineHash, plan.lineUser = -1, -1
	if plan.chosen > 0 {
		slices.Sort(keys)
		k := keys[plan.chosen-1]
		plan.lineHash, plan.lineUser = int64(k>>32), ids[uint32(k)]
	}
	return plan, nil
}

// RolloutBatch claims one unfinished batch that no other transaction holds,
// gives the segment (history reason auto, source auto) to the chosen users
// in it who lack it, takes it (reason auto) from those who hold it by the
// rule but are not chosen, and marks the batch done, all in one
// transaction. It reports false when there was no batch to claim, and how
// many memberships it created.
func (r *RolloutRepo) RolloutBatch(ctx context.Context, segmentID int64) (claimed bool, added int64, err error) {
	var removed int64
	err = withTx(ctx, r.pool, func(tx pgx.Tx) error {
		// FOR KEY SHARE of the segment holds off its deletion until commit.
		// The batch's population (its users registered up to
		// population_seq) comes with the claim, read after the lock.
		claim := `
			WITH batch AS (
				SELECT b.first_user, b.last_user, s.slug, s.population_seq,
				       coalesce(s.rollout_threshold_hash, -1), coalesce(s.rollout_threshold_user, -1),
				       s.layer_id, coalesce((SELECT l.slug FROM layers l WHERE l.id = s.layer_id), ''),
				       ` + rangesOf("s.layer_buckets") + `
				FROM rollout_batches b
				JOIN segments s ON s.id = b.segment_id
				WHERE b.segment_id = $1 AND NOT b.done AND s.rollout_status = 'running'
				ORDER BY b.first_user
				LIMIT 1
				FOR UPDATE OF b SKIP LOCKED
				FOR KEY SHARE OF s
			)
			SELECT b.*, ARRAY(SELECT u.id FROM users u
			                  WHERE u.id BETWEEN b.first_user AND b.last_user AND u.seq <= b.population_seq
			                  ORDER BY u.id)
			FROM batch b`
		var (
			first, last, population, lineHash, lineUser int64
			slug, layer                                 string
			layerID                                     *int64
			froms, tos                                  []int32
			users                                       []int64
		)
		err := tx.QueryRow(ctx, claim, segmentID).Scan(&first, &last, &slug, &population, &lineHash, &lineUser,
			&layerID, &layer, &froms, &tos, &users)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("claim a batch: %w", dbError(err))
		}
		claimed = true
		// The chosen users, by the rule the line fixed: (hash, id) at most
		// (lineHash, lineUser); in a layer, the bucket in the segment's
		// buckets. Hashed here, as planRollout does.
		hasher := domain.NewSegmentHasher(slug)
		if layer != "" {
			hasher = domain.NewLayerHasher(layer)
		}
		buckets := bucketRanges(froms, tos)
		chosen := make([]int64, 0, len(users))
		for _, id := range users {
			h := hasher.Hash(id)
			if layer != "" && buckets.Contains(domain.BucketOf(h)) ||
				layer == "" && (int64(h) < lineHash || (int64(h) == lineHash && id <= lineUser)) {
				chosen = append(chosen, id)
			}
		}
		if err := setReason(ctx, tx, domain.ReasonAuto); err != nil {
			return err
		}
		// A batch need not wait for its commit to reach the disk: if the
		// server crashes first, the batch's done mark is lost with its
		// memberships, and the batch is simply done again.
		if _, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = off`); err != nil {
			return fmt.Errorf("batch commit mode: %w", dbError(err))
		}
		// The chosen users who have not opted out get the segment; the
		// batch's members by the rule (source auto) in the population who
		// have not opted out and are not chosen (a lowered share) lose it.
		// Memberships given by hand are never touched. The losers are found
		// from the segment's members in the batch's range (an index range
		// scan) and are few unless the share was lowered, so the database
		// checks their hash itself; joined to the population instead, the
		// planner read every member of the segment for each batch, or
		// looped over the population for each member. In a layer, a chosen
		// user who holds another segment of the layer is skipped (the
		// INSERT's conflict on the (user, layer) index), and a member by
		// the rule loses the segment when its bucket left the segment's
		// buckets. The INSERT fires
		// memberships_history_insert and the DELETE
		// memberships_history_delete: history (reason auto) and the users
		// queued for the read caches (more than 20,000: every user).
		const assign = `
			WITH chosen AS (
				SELECT c.id FROM unnest($8::bigint[]) AS c(id)
				WHERE NOT EXISTS (SELECT FROM segment_opt_outs o WHERE o.segment_id = $1 AND o.user_id = c.id)
			), given AS (
				INSERT INTO memberships (user_id, segment_id, layer_id, source)
				SELECT id, $1, $9, 'auto' FROM chosen ORDER BY id
				ON CONFLICT DO NOTHING
				RETURNING 1
			), taken AS (
				DELETE FROM memberships m
				USING users u
				WHERE m.segment_id = $1 AND m.user_id BETWEEN $2 AND $3 AND m.source = 'auto'
				  AND u.id = m.user_id AND u.seq <= $4
				  AND NOT EXISTS (SELECT FROM segment_opt_outs o WHERE o.segment_id = $1 AND o.user_id = m.user_id)
				  AND CASE WHEN $9::bigint IS NULL THEN (segment_hash($5, m.user_id), m.user_id) > ($6::bigint, $7::bigint)
				           ELSE NOT ((SELECT layer_buckets FROM segments WHERE id = $1) @> layer_bucket($10, m.user_id)) END
				RETURNING 1
			), progress AS (
				UPDATE segments SET rollout_assigned = rollout_assigned + (SELECT count(*) FROM chosen)
				WHERE id = $1
			)
			SELECT (SELECT count(*) FROM given), (SELECT count(*) FROM taken)`
		if err := tx.QueryRow(ctx, assign, segmentID, first, last, population, slug, lineHash, lineUser, chosen, layerID, layer).Scan(&added, &removed); err != nil {
			return fmt.Errorf("assign users %d..%d: %w", first, last, dbError(err))
		}
		const done = `UPDATE rollout_batches SET done = true WHERE segment_id = $1 AND first_user = $2`
		_, err = tx.Exec(ctx, done, segmentID, first)
		return err
	})
	if err != nil {
		return false, 0, fmt.Errorf("rollout batch of segment %d: %w", segmentID, dbError(err))
	}
	r.rec.MembershipsChanged(domain.OperationAdd, domain.ReasonAuto, added)
	r.rec.MembershipsChanged(domain.OperationRemove, domain.ReasonAuto, removed)
	return claimed, added, nil
}

// FinishRollout marks a running rollout done if every batch is done (and
// drops its batches), in one transaction, and returns the rollout as it
// stands. It returns domain.ErrNotFound if the segment is gone.
func (r *RolloutRepo) FinishRollout(ctx context.Context, segmentID int64) (domain.Rollout, error) {
	var ro domain.Rollout
	err := withTx(ctx, r.pool, func(tx pgx.Tx) error {
		const finish = `
			UPDATE segments s SET
				rollout_status = CASE
					WHEN rollout_status = 'running'
					 AND NOT EXISTS (SELECT 1 FROM rollout_batches b WHERE b.segment_id = s.id AND NOT b.done)
					THEN 'done' ELSE rollout_status END
			WHERE id = $1 AND auto_percent IS NOT NULL
			RETURNING rollout_status, rollout_assigned, coalesce(rollout_total, 0)`
		err := tx.QueryRow(ctx, finish, segmentID).Scan(&ro.Status, &ro.Assigned, &ro.Total)
		if errors.Is(err, pgx.ErrNoRows) {
			return segmentGone(segmentID)
		}
		if err != nil || ro.Status != domain.RolloutDone {
			return err
		}
		const cleanup = `DELETE FROM rollout_batches WHERE segment_id = $1`
		_, err = tx.Exec(ctx, cleanup, segmentID)
		return err
	})
	if err != nil && !errors.Is(err, domain.ErrNotFound) {
		return ro, fmt.Errorf("finish rollout of segment %d: %w", segmentID, dbError(err))
	}
	return ro, err
}

// FailRollout marks an unfinished rollout failed.
func (r *RolloutRepo) FailRollout(ctx context.Context, segmentID int64) error {
	const q = `UPDATE segments SET rollout_status = 'failed' WHERE id = $1 AND rollout_status IN ('pending', 'running')`
	if _, err := r.pool.Exec(ctx, q, segmentID); err != nil {
		return fmt.Errorf("fail rollout of segment %d: %w", segmentID, dbError(err))
	}
	return nil
}

// UnfinishedRollouts returns the ids of segments whose rollout is pending,
// running or failed.
func (r *RolloutRepo) UnfinishedRollouts(ctx context.Context) ([]int64, error) {
	const q = `SELECT id FROM segments WHERE rollout_status IN ('pending', 'running', 'failed') ORDER BY id`
	rows, _ := r.pool.Query(ctx, q)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("list unfinished rollouts: %w", dbError(err))
	}
	return ids, nil
}
