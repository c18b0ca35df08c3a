package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/segments-service/segments/tools/loadgen"
)

// importsPhase measures list imports: a 10,000,000-id upload (time to its
// 202, ids received a second, the API's memory; then the worker's sort),
// and an add of every seeded user (up to 1,000,000) from upload to done,
// against the same rows written by one INSERT … SELECT, with reads at
// o.rate measured idle, with one core busy, and during the apply.
func (b *bench) importsPhase(ctx context.Context) error {
	if err := b.bigUpload(ctx); err != nil {
		return err
	}
	return b.importApply(ctx)
}

// bigUpload sends a list of 10,000,000 distinct ids (not in order) into a
// manual segment, then waits for the worker to sort it, then deletes the
// segment (which ends the import failed: its apply is not measured here).
func (b *bench) bigUpload(ctx context.Context) error {
	const n = 10_000_000
	slug := fmt.Sprintf("IMPORT_BIG_%d", time.Now().Unix())
	if err := callAPI(ctx, http.MethodPost, b.svc.base+"/api/v1/segments", fmt.Sprintf(`{"slug":%q}`, slug), nil); err != nil {
		return err
	}
	api := b.svc.api.Process.Pid
	rssBefore, peakBefore := rssMB(api, "VmRSS"), rssMB(api, "VmHWM")
	workerBefore := rssMB(b.svc.wrkr.Process.Pid, "VmRSS")
	b.log("phase: upload a list of %d ids", n)
	list := newIDList(n)
	t0 := time.Now()
	imp, err := upload(ctx, b.svc.base, slug, "add", list)
	took := time.Since(t0)
	if err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("POST …/imports, %d ids (%.0f MB), to its 202", n, float64(list.size)/1e6), loadgen.Result{}, took,
		fmt.Sprintf("%.2f M ids/s received; API RSS %.0f MB before, peak %.0f → %.0f MB", n/took.Seconds()/1e6, rssBefore, peakBefore, rssMB(api, "VmHWM")))

	b.log("phase: the worker sorts the list")
	t1 := time.Now()
	err = waitUntil(ctx, 10*time.Minute, 100*time.Millisecond, func() (bool, error) {
		got, err := getImport(ctx, b.svc.base, imp.ID)
		return got.Received != nil, err
	})
	if err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("the worker sorts %d ids", n), loadgen.Result{}, time.Since(t1),
		fmt.Sprintf("worker RSS %.0f MB before, peak %.0f MB", workerBefore, rssMB(b.svc.wrkr.Process.Pid, "VmHWM")))
	return callAPI(ctx, http.MethodDelete, b.svc.base+"/api/v1/segments/"+slug, "", nil)
}

// importApply adds every seeded user (up to 1,000,000, in a shuffled list)
// to a new manual segment, timed from the upload to done, with reads at
// o.rate going on (their latency against idle and one core busy); then
// again without the reads, into another segment, and writes that one's
// rows raw, as the population phase does for a rollout: the two rates'
// ratio.
func (b *bench) importApply(ctx context.Context) error {
	n := min(b.o.users, 1_000_000)
	b.log("phase: reads at %.0f/s, idle (imports)", b.o.rate)
	idle, err := b.reads(ctx, b.o.openLoop())
	if err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("GET at %.0f/s, idle (imports phase)", b.o.rate), idle, 0, "")
	b.log("phase: reads at %.0f/s, one core busy", b.o.rate)
	busy, err := b.readsWithBusyCore(ctx, b.o.openLoop())
	if err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("GET at %.0f/s, one core busy", b.o.rate), busy, 0,
		fmt.Sprintf("p99 %.2f× idle", busy.Percentile(99).Seconds()/idle.Percentile(99).Seconds()))

	stamp := time.Now().Unix()
	during, _, err := b.timedImport(ctx, fmt.Sprintf("IMPORT_READS_%d", stamp), n, true)
	if err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("GET at %.0f/s, during the import", b.o.rate), during, 0,
		fmt.Sprintf("p99 %.2f× idle, %.2f× one core busy", during.Percentile(99).Seconds()/idle.Percentile(99).Seconds(),
			during.Percentile(99).Seconds()/busy.Percentile(99).Seconds()))
	slug, rawSlug := fmt.Sprintf("IMPORT_ADD_%d", stamp), fmt.Sprintf("IMPORT_RAW_%d", stamp)
	_, rate, err := b.timedImport(ctx, slug, n, false)
	if err != nil {
		return err
	}
	if err := callAPI(ctx, http.MethodPost, b.svc.base+"/api/v1/segments", fmt.Sprintf(`{"slug":%q}`, rawSlug), nil); err != nil {
		return err
	}
	b.log("phase: the same %d rows in one INSERT … SELECT", n)
	if err := b.settle(ctx); err != nil {
		return err
	}
	var written int64
	t1 := time.Now()
	err = pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('segments.reason', 'import', true)`); err != nil {
			return err
		}
		const q = `INSERT INTO memberships (user_id, segment_id, source)
		           SELECT m.user_id, r.id, 'manual' FROM memberships m, segments r
		           WHERE m.segment_id = (SELECT id FROM segments WHERE slug = $1) AND r.slug = $2`
		tag, err := tx.Exec(ctx, q, slug, rawSlug)
		written = tag.RowsAffected()
		return err
	})
	rawWall := time.Since(t1)
	if err != nil {
		return fmt.Errorf("insert the import's rows: %w", err)
	}
	rawRate := float64(written) / rawWall.Seconds()
	b.rep.add(fmt.Sprintf("the same rows, one INSERT … SELECT (%d rows)", written), loadgen.Result{}, rawWall,
		fmt.Sprintf("%.0f rows/s; the import's rate is %.2f× this", rawRate, rate/rawRate))
	return nil
}

// timedImport adds users 1..n (a shuffled list) to a new manual segment
// slug and times it from the upload to done, after a settle; with reads,
// reads at o.rate go on all the while, and are returned.
func (b *bench) timedImport(ctx context.Context, slug string, n int, reads bool) (loadgen.Result, float64, error) {
	if err := callAPI(ctx, http.MethodPost, b.svc.base+"/api/v1/segments", fmt.Sprintf(`{"slug":%q}`, slug), nil); err != nil {
		return loadgen.Result{}, 0, err
	}
	if err := b.settle(ctx); err != nil {
		return loadgen.Result{}, 0, err
	}
	name := fmt.Sprintf("import, add %d users (upload to done)", n)
	stopReads := func() loadgen.Result { return loadgen.Result{} }
	if reads {
		name += fmt.Sprintf(", reads at %.0f/s", b.o.rate)
		stopReads = b.backgroundReads(ctx, b.o.openLoop())
	}
	defer stopReads()
	b.log("phase: %s", name)
	t0 := time.Now()
	imp, err := upload(ctx, b.svc.base, slug, "add", newIDList(n))
	if err != nil {
		return loadgen.Result{}, 0, err
	}
	var end importState
	err = waitUntil(ctx, 30*time.Minute, 100*time.Millisecond, func() (bool, error) {
		var err error
		end, err = getImport(ctx, b.svc.base, imp.ID)
		return end.Status == "done" || end.Status == "failed", err
	})
	wall := time.Since(t0)
	during := stopReads()
	if err != nil {
		return during, 0, err
	}
	if end.Status != "done" || end.Added != int64(n) {
		return during, 0, fmt.Errorf("the import ended %s with %d added, want done with %d", end.Status, end.Added, n)
	}
	rate := float64(n) / wall.Seconds()
	b.rep.add(name, loadgen.Result{}, wall, fmt.Sprintf("%.0f ids/s", rate))
	return during, rate, nil
}

// importState is what the bench reads of an import.
type importState struct {
	ID       int64  `json:"id"`
	Status   string `json:"status"`
	Received *int64 `json:"received"`
	Added    int64  `json:"added"`
}

// upload posts list as an import into slug with mode and returns the 202's
// import.
func upload(ctx context.Context, base, slug, mode string, list io.Reader) (importState, error) {
	url := fmt.Sprintf("%s/api/v1/segments/%s/imports?mode=%s", base, slug, mode)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, list)
	if err != nil {
		return importState{}, err
	}
	req.Header.Set("Content-Type", "text/csv")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return importState{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		return importState{}, fmt.Errorf("upload into %s: %d %s", slug, resp.StatusCode, body)
	}
	var imp importState
	return imp, json.Unmarshal(body, &imp)
}

func getImport(ctx context.Context, base string, id int64) (importState, error) {
	var imp importState
	err := callAPI(ctx, http.MethodGet, base+"/api/v1/imports/"+strconv.FormatInt(id, 10), "", &imp)
	return imp, err
}

// idList is a list of the ids 1..n, one a line, in a shuffled order (a
// multiplicative permutation modulo n), generated as it is read.
type idList struct {
	n, i, step int64
	buf        []byte
	size       int64
}

func newIDList(n int) *idList {
	l := &idList{n: int64(n), step: 1}
	// A step coprime with n walks every residue once.
	for _, p := range []int64{7919, 104729, 1299709} {
		if int64(n)%p != 0 {
			l.step = p
		}
	}
	return l
}

func (l *idList) Read(p []byte) (int, error) {
	for len(l.buf) < len(p) && l.i < l.n {
		l.buf = strconv.AppendInt(l.buf, (l.i*l.step)%l.n+1, 10)
		l.buf = append(l.buf, '\n')
		l.i++
	}
	if len(l.buf) == 0 {
		return 0, io.EOF
	}
	k := copy(p, l.buf)
	l.buf = l.buf[:copy(l.buf, l.buf[k:])]
	l.size += int64(k)
	return k, nil
}
