package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"sync"
	"time"

	"github.com/segments-service/segments/tools/loadgen"
)

// rolloutPhase sends reads at o.rate idle, then creates a 50 % segment and
// times its rollout with the same reads going on, and the worker's memory;
// with o.events, then the publishing of its events.
func (b *bench) rolloutPhase(ctx context.Context) error {
	b.log("phase: reads at %.0f/s, idle", b.o.rate)
	res, err := b.reads(ctx, b.o.openLoop())
	if err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("GET at %.0f/s, idle", b.o.rate), res, 0, "")

	b.log("phase: 50 %% rollout over %d users, with reads at %.0f/s", b.o.users, b.o.rate)
	workerBefore := rssMB(b.svc.wrkr.Process.Pid, "VmRSS")
	stopReads := b.backgroundReads(ctx, b.o.openLoop())
	defer stopReads()
	time.Sleep(500 * time.Millisecond)
	slug := fmt.Sprintf("ROLLOUT_%d", time.Now().Unix())
	startRollout := time.Now()
	if err := b.svc.createPercentSegment(ctx, slug, 50); err != nil {
		return err
	}
	status, assigned, err := b.waitRollout(ctx, slug)
	rolloutWall := time.Since(startRollout)
	during := stopReads()
	if err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("50 %% rollout (%d of %d users)", assigned, b.o.users), loadgen.Result{}, rolloutWall,
		fmt.Sprintf("worker RSS %.0f → peak %.0f MB; %s", workerBefore, rssMB(b.svc.wrkr.Process.Pid, "VmHWM"), status))
	b.rep.add(fmt.Sprintf("GET at %.0f/s, during rollout", b.o.rate), during, 0, "")
	if b.o.events {
		return b.eventsPublished(ctx)
	}
	return nil
}

// percentPhase creates a 10 % segment, waits for its rollout, then raises
// it to 50 % and times that rollout, with reads at o.rate measured idle and
// during it.
func (b *bench) percentPhase(ctx context.Context) error {
	slug := fmt.Sprintf("RAMP_%d", time.Now().Unix())
	b.log("phase: a 10 %% segment over %d users", b.o.users)
	if _, err := b.createRolledOut(ctx, slug, 10); err != nil {
		return err
	}
	if err := b.settle(ctx); err != nil {
		return err
	}

	// The first reads open the HTTP connections and the API's database
	// connections (a new PostgreSQL session's first statements take
	// milliseconds): not counted.
	b.log("phase: reads at %.0f/s, warming up", b.o.rate)
	warm := b.o.openLoop()
	warm.Duration = 3 * time.Second
	if _, err := b.reads(ctx, warm); err != nil {
		return err
	}
	b.log("phase: reads at %.0f/s, idle", b.o.rate)
	idle, err := b.reads(ctx, b.o.openLoop())
	if err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("GET at %.0f/s, idle", b.o.rate), idle, 0, "")

	// The same reads with one core kept busy by a process that shares
	// nothing with the service: how much of the ratio below the machine's
	// scheduling alone accounts for.
	b.log("phase: reads at %.0f/s, one core busy", b.o.rate)
	busy, err := b.readsWithBusyCore(ctx, b.o.openLoop())
	if err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("GET at %.0f/s, one core busy", b.o.rate), busy, 0,
		fmt.Sprintf("p99 %.2f× idle", float64(busy.Percentile(99))/float64(idle.Percentile(99))))

	b.log("phase: 10 → 50 %%, with reads at %.0f/s", b.o.rate)
	stopReads := b.backgroundReads(ctx, b.o.openLoop())
	defer stopReads()
	time.Sleep(500 * time.Millisecond)
	t1 := time.Now()
	if err := callAPI(ctx, http.MethodPatch, b.svc.base+"/api/v1/segments/"+slug, `{"auto_percent":50}`, nil); err != nil {
		return err
	}
	status, assigned, err := b.waitRollout(ctx, slug)
	wall := time.Since(t1)
	during := stopReads()
	if err == nil && status != "done" {
		err = fmt.Errorf("the change's rollout ended %s", status)
	}
	if err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("10 → 50 %% (%d of %d users)", assigned, b.o.users), loadgen.Result{}, wall,
		fmt.Sprintf("read p99 %.2f× idle", float64(during.Percentile(99))/float64(idle.Percentile(99))))
	b.rep.add(fmt.Sprintf("GET at %.0f/s, during 10 → 50 %%", b.o.rate), during, 0, "")
	return nil
}

// createRolledOut creates a percent segment, waits until its rollout is
// done, reports how long that took and returns how many users it got.
func (b *bench) createRolledOut(ctx context.Context, slug string, percent int) (int64, error) {
	t0 := time.Now()
	if err := b.svc.createPercentSegment(ctx, slug, percent); err != nil {
		return 0, err
	}
	status, assigned, err := b.waitRollout(ctx, slug)
	if err == nil && status != "done" {
		err = fmt.Errorf("the %d %% rollout ended %s", percent, status)
	}
	if err != nil {
		return 0, err
	}
	b.rep.add(fmt.Sprintf("%d %% rollout (%d of %d users)", percent, assigned, b.o.users), loadgen.Result{}, time.Since(t0), "")
	return assigned, nil
}

// waitRollout waits until slug's rollout is done or failed (10 minutes at
// most) and returns its status and assigned count. It watches the status
// column itself: GET /segments/{slug} counts the members, which on a large
// segment would load the machine being measured.
func (b *bench) waitRollout(ctx context.Context, slug string) (string, int64, error) {
	var (
		status   string
		assigned int64
	)
	err := waitUntil(ctx, 10*time.Minute, 20*time.Millisecond, func() (bool, error) {
		const q = `SELECT rollout_status, rollout_assigned FROM segments WHERE slug = $1`
		if err := b.pool.QueryRow(ctx, q, slug).Scan(&status, &assigned); err != nil {
			return false, err
		}
		return status == "done" || status == "failed", nil
	})
	if errors.Is(err, errTimedOut) {
		err = errors.New("the rollout did not finish in 10 minutes")
	}
	return status, assigned, err
}

// settle lets the work of what came before finish, so that the idle reads
// after it are idle: the relay publishes the events still waiting (with
// o.events) and a checkpoint writes out the seed's and the rollout's pages.
func (b *bench) settle(ctx context.Context) error {
	if b.o.events {
		if err := b.waitPublished(ctx); err != nil {
			return err
		}
	}
	_, err := b.pool.Exec(ctx, "CHECKPOINT")
	return err
}

// reads sends reads of random users to the API (cache on) as cfg says.
func (b *bench) reads(ctx context.Context, cfg loadgen.Config) (loadgen.Result, error) {
	return loadgen.Run(ctx, b.client, cfg, loadgen.UserSegments(b.svc.base, int64(b.o.users)))
}

// readsWithBusyCore runs reads as cfg says while a shell loops without
// pause: one core busy with work that touches nothing the service uses.
func (b *bench) readsWithBusyCore(ctx context.Context, cfg loadgen.Config) (loadgen.Result, error) {
	spin := exec.CommandContext(ctx, "sh", "-c", "while :; do :; done")
	if err := spin.Start(); err != nil {
		return loadgen.Result{}, fmt.Errorf("start a busy loop: %w", err)
	}
	defer func() {
		_ = spin.Process.Kill()
		_ = spin.Wait()
	}()
	return b.reads(ctx, cfg)
}

// backgroundReads sends reads at cfg's rate until the returned function is
// called, which returns what they measured (once; later calls return the
// zero Result).
func (b *bench) backgroundReads(ctx context.Context, cfg loadgen.Config) func() loadgen.Result {
	reads := make(chan loadgen.Result, 1)
	rctx, cancel := context.WithCancel(ctx)
	go func() {
		cfg.Duration = 10 * time.Minute
		r, _ := b.reads(rctx, cfg)
		reads <- r
	}()
	var once sync.Once
	return func() loadgen.Result {
		var r loadgen.Result
		once.Do(func() { cancel(); r = <-reads })
		return r
	}
}
