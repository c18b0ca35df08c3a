package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/segments-service/segments/tools/loadgen"
)

// populationPhase measures a population that need not fit in the read
// cache: for each way of drawing users (uniform, then Zipf-skewed) the
// read's SQL in pgbench and the same reads through the API with the cache
// on and off; then the segment listing; then a 10 % rollout against the
// same rows written in one INSERT … SELECT.
func (b *bench) populationPhase(ctx context.Context) error {
	for _, d := range []distribution{uniform, zipf} {
		if err := b.populationReads(ctx, d); err != nil {
			return err
		}
	}
	if err := b.listingPhase(ctx); err != nil {
		return err
	}
	return b.rolloutCeilingPhase(ctx)
}

// populationReads runs pgbench on the read's SQL with users drawn as d
// says, then sends the same reads to the API with the cache on, once to
// warm it up and once measured (with the cache's size and the API's memory
// after it), and with the cache off.
func (b *bench) populationReads(ctx context.Context, d distribution) error {
	b.log("phase: pgbench, the read's SQL, %s", d.name)
	ceiling, err := runPgbench(ctx, b.o, b.dbURL, d.pgbench)
	if err != nil {
		return err
	}
	b.rep.add("pgbench: the read's SQL, "+d.name, loadgen.Result{}, 0, fmt.Sprintf("%.0f tps", ceiling))
	if d.name == uniform.name {
		if err := b.sweep(ctx); err != nil {
			return err
		}
	}
	for _, run := range []struct {
		name, base string
		measured   bool
	}{
		{"cache on, warm-up", b.svc.base, false},
		{"cache on", b.svc.base, true},
		{"cache off", b.svc.uncached, false},
	} {
		r, err := b.closedReads(ctx, fmt.Sprintf("GET /users/{id}/segments, %s, %s", d.name, run.name), run.base, d, ceiling)
		if err != nil {
			return err
		}
		if run.measured {
			c, err := cacheLookups(b.svc.base)
			if err != nil {
				return err
			}
			r.detail += fmt.Sprintf("; cache: %.0f users, %.1f MB; API RSS %.0f MB", c.entries, c.bytes/1e6, rssMB(b.svc.api.Process.Pid, "VmRSS"))
		}
		b.rep.rows = append(b.rep.rows, r)
	}
	return nil
}

// sweep reads users 1, 2, … once each through the cached API, as many as
// its cache keeps for sure (half its budget, at 90 bytes a user), so that
// the uniform reads that follow find a warm cache: random draws would
// take about N·ln N reads to touch every user once.
func (b *bench) sweep(ctx context.Context) error {
	n := min(int64(b.o.users), b.o.cacheBytes/2/90)
	b.log("phase: a sweep reading users 1..%d once", n)
	t0 := time.Now()
	res, err := loadgen.Run(ctx, b.client, loadgen.Config{Conns: b.o.conns, Duration: 30 * time.Minute, Requests: int(n)},
		func(i int) (*http.Request, error) {
			return http.NewRequest(http.MethodGet, fmt.Sprintf("%s/api/v1/users/%d/segments", b.svc.base, i+1), nil)
		})
	if err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("warm-up: users 1..%d read once each", n), res, time.Since(t0), "")
	return nil
}

// listingPhase asks for the first page of segments (limit=100) 200 times
// over one connection, closed loop.
func (b *bench) listingPhase(ctx context.Context) error {
	const n = 200
	b.log("phase: GET /segments?limit=100, %d times", n)
	url := b.svc.base + "/api/v1/segments?limit=100"
	var page struct {
		Segments []struct {
			MemberCount int64 `json:"member_count"`
		} `json:"segments"`
	}
	if err := callAPI(ctx, http.MethodGet, url, "", &page); err != nil {
		return err
	}
	var members int64
	for _, s := range page.Segments {
		members += s.MemberCount
	}
	res, err := loadgen.Run(ctx, b.client, loadgen.Config{Conns: 1, Duration: 2 * time.Minute, Requests: n},
		func(int) (*http.Request, error) { return http.NewRequest(http.MethodGet, url, nil) })
	if err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("GET /segments?limit=100 (1 conn, %d times)", n), res, 0,
		fmt.Sprintf("%d segments of %d members on average", len(page.Segments), members/int64(max(len(page.Segments), 1))))
	return nil
}

// rolloutCeilingPhase times a 10 % rollout over every user from its
// creation until done, then writes the same rows raw: a manual segment
// gets the percent segment's members in one INSERT … SELECT, in one
// transaction, the triggers writing history, cache invalidations and
// member counts as for any write. Raw time over rollout time is the
// rollout's write rate as a share of that ceiling. Before each, the relay
// publishes what is waiting and a checkpoint writes out what came before.
func (b *bench) rolloutCeilingPhase(ctx context.Context) error {
	stamp := time.Now().Unix()
	percentSlug, rawSlug := fmt.Sprintf("POPULATION_10_%d", stamp), fmt.Sprintf("POPULATION_RAW_%d", stamp)
	if err := b.settle(ctx); err != nil {
		return err
	}
	b.log("phase: a 10 %% rollout over %d users", b.o.users)
	t0 := time.Now()
	if err := b.svc.createPercentSegment(ctx, percentSlug, 10); err != nil {
		return err
	}
	status, _, err := b.waitRollout(ctx, percentSlug)
	rolloutWall := time.Since(t0)
	if err == nil && status != "done" {
		err = fmt.Errorf("the 10 %% rollout ended %s", status)
	}
	if err != nil {
		return err
	}
	var percentID, total int64
	if err := b.pool.QueryRow(ctx, `SELECT id, rollout_total FROM segments WHERE slug = $1`, percentSlug).Scan(&percentID, &total); err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("10 %% rollout (%d rows, %d users)", total, b.o.users), loadgen.Result{}, rolloutWall,
		fmt.Sprintf("%.0f rows/s", float64(total)/rolloutWall.Seconds()))

	b.log("phase: the same %d rows in one INSERT … SELECT", total)
	if err := callAPI(ctx, http.MethodPost, b.svc.base+"/api/v1/segments", fmt.Sprintf(`{"slug":%q}`, rawSlug), nil); err != nil {
		return err
	}
	var rawID int64
	if err := b.pool.QueryRow(ctx, `SELECT id FROM segments WHERE slug = $1`, rawSlug).Scan(&rawID); err != nil {
		return err
	}
	if err := b.settle(ctx); err != nil {
		return err
	}
	var written int64
	t1 := time.Now()
	err = pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('segments.reason', 'auto', true)`); err != nil {
			return err
		}
		const q = `INSERT INTO memberships (user_id, segment_id, source)
		           SELECT user_id, $1, 'auto' FROM memberships WHERE segment_id = $2`
		tag, err := tx.Exec(ctx, q, rawID, percentID)
		written = tag.RowsAffected()
		return err
	})
	rawWall := time.Since(t1)
	if err != nil {
		return fmt.Errorf("insert the rollout's rows: %w", err)
	}
	rawRate := float64(written) / rawWall.Seconds()
	b.rep.add(fmt.Sprintf("the same rows, one INSERT … SELECT (%d rows)", written), loadgen.Result{}, rawWall,
		fmt.Sprintf("%.0f rows/s; the rollout's rate is %.2f× this", rawRate, (float64(total)/rolloutWall.Seconds())/rawRate))
	return nil
}
