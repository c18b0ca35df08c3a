package postgres_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/postgres"
)

// Users 29239 and 64477 have the same segment_hash for the slug "TIE".
const (
	tieSlug         = "TIE"
	tieLow, tieHigh = 29239, 64477
	tieHash         = 1947455619
)

// TestRolloutFollowsTheDatabasesOrder runs a rollout at every share from 0
// to 100 % over 52 users, one of them opted out and two with the same
// hash, and checks each plan against the database's own definition: the
// count round(N·p/100) of those who did not opt out, the line at the k-th
// lowest (segment_hash, id) — ties broken by id — and batches of
// consecutive users by id; then that the batches leave exactly the users
// at or below the line holding the segment.
func TestRolloutFollowsTheDatabasesOrder(t *testing.T) {
	t.Parallel()
	if domain.SegmentHash(tieSlug, tieLow) != tieHash || domain.SegmentHash(tieSlug, tieHigh) != tieHash {
		t.Fatal("the two users no longer share a hash")
	}
	pool := env.NewPool(t)
	ctx := t.Context()
	mustExec(t, pool, `INSERT INTO users (id) SELECT generate_series(1, $1::bigint)`, 50)
	mustExec(t, pool, `INSERT INTO users (id) VALUES ($1), ($2)`, tieHigh, tieLow)
	mustExec(t, pool, `
		INSERT INTO segments (slug, auto_percent, population_seq, rollout_status)
		SELECT $1, 0, (SELECT max(seq) FROM users), 'pending' FROM (`+asTest+`) audit`, tieSlug)
	var segmentID int64
	if err := pool.QueryRow(ctx, `SELECT id FROM segments WHERE slug = $1`, tieSlug).Scan(&segmentID); err != nil {
		t.Fatal(err)
	}
	mustExec(t, pool, `INSERT INTO segment_opt_outs (segment_id, user_id) VALUES ($1, $2)`, segmentID, 3)
	repo := postgres.NewRolloutRepo(pool, postgres.NopRecorder{})

	type plan struct {
		Total              int64
		LineHash, LineUser int64
		Batches            []string
	}
	tieAtLine := false
	for percent := 0; percent <= 100; percent++ {
		mustExec(t, pool, `DELETE FROM rollout_batches`)
		mustExec(t, pool, `
			UPDATE segments SET auto_percent = $2, rollout_status = 'pending', rollout_total = NULL,
				rollout_threshold_hash = NULL, rollout_threshold_user = NULL
			FROM (`+asTest+`) audit
			WHERE id = $1`, segmentID, percent)
		if _, err := repo.PrepareRollout(ctx, segmentID, 7); err != nil {
			t.Fatal(err)
		}
		var got, want plan
		const stored = `
			SELECT rollout_total, coalesce(rollout_threshold_hash, -1), coalesce(rollout_threshold_user, -1),
			       ARRAY(SELECT first_user || '-' || last_user FROM rollout_batches ORDER BY first_user)
			FROM segments WHERE id = $1`
		if err := pool.QueryRow(ctx, stored, segmentID).Scan(&got.Total, &got.LineHash, &got.LineUser, &got.Batches); err != nil {
			t.Fatal(err)
		}
		const defined = `
			WITH population AS (
				SELECT segment_hash($2, u.id) AS h, u.id FROM users u
				WHERE NOT EXISTS (SELECT FROM segment_opt_outs o WHERE o.segment_id = $1 AND o.user_id = u.id)
			), k AS (
				SELECT round(count(*) * $3::numeric / 100)::bigint AS k FROM population
			)
			SELECT k,
			       coalesce((SELECT h FROM population ORDER BY h, id OFFSET greatest(k - 1, 0) LIMIT 1), -1),
			       coalesce((SELECT id FROM population ORDER BY h, id OFFSET greatest(k - 1, 0) LIMIT 1), -1),
			       ARRAY(SELECT min(id) || '-' || max(id)
			             FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1) / $4 AS batch FROM users) b
			             GROUP BY batch ORDER BY min(id))
			FROM k`
		if err := pool.QueryRow(ctx, defined, segmentID, tieSlug, percent, 7).Scan(&want.Total, &want.LineHash, &want.LineUser, &want.Batches); err != nil {
			t.Fatal(err)
		}
		if want.Total == 0 {
			// Nothing chosen: a rollout with nobody holding the segment by
			// the rule is done at once, with no line and no batches.
			want = plan{LineHash: -1, LineUser: -1, Batches: []string{}}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("%d %%: plan differs from the database's order (-want +got):\n%s", percent, diff)
		}
		tieAtLine = tieAtLine || (got.LineHash == tieHash && got.LineUser == tieLow)

		// The batches, hashing in Go too, leave exactly the users at or
		// below the line holding it, by the database's hash.
		for {
			claimed, _, err := repo.RolloutBatch(ctx, segmentID)
			if err != nil {
				t.Fatal(err)
			}
			if !claimed {
				break
			}
		}
		var members, below []int64
		const held = `SELECT coalesce(array_agg(user_id ORDER BY user_id), '{}') FROM memberships WHERE segment_id = $1`
		if err := pool.QueryRow(ctx, held, segmentID).Scan(&members); err != nil {
			t.Fatal(err)
		}
		const rule = `
			SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM users u
			WHERE NOT EXISTS (SELECT FROM segment_opt_outs o WHERE o.segment_id = $1 AND o.user_id = u.id)
			  AND (segment_hash($2, u.id), u.id) <= ($3::bigint, $4::bigint)`
		if err := pool.QueryRow(ctx, rule, segmentID, tieSlug, got.LineHash, got.LineUser).Scan(&below); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(below, members); diff != "" || int64(len(members)) != want.Total {
			t.Fatalf("%d %%: %d members, want %d, the users at or below the line (-want +got):\n%s", percent, len(members), want.Total, diff)
		}
	}
	if !tieAtLine {
		t.Fatalf("no share put the line between users %d and %d, which share a hash", tieLow, tieHigh)
	}
}
