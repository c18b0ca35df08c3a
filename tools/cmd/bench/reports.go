package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segments-service/segments/tools/loadgen"
)

// reportPhase downloads one user's month report, 200 users' links over
// and over with 8 connections, then all users' month report once.
func (b *bench) reportPhase(ctx context.Context) error {
	b.log("phase: one user's month report")
	period := time.Now().UTC().Format("2006-01")
	var links []string
	for range 200 {
		var l struct{ URL string }
		body := fmt.Sprintf(`{"period":%q,"user_id":%d}`, period, 1+rand.Int64N(int64(b.o.users)))
		if err := callAPI(ctx, http.MethodPost, b.svc.base+"/api/v1/reports/history", body, &l); err != nil {
			return err
		}
		links = append(links, b.svc.base+l.URL) // links are relative
	}
	res, err := loadgen.Run(ctx, b.client, loadgen.Config{Conns: 8, Duration: b.o.duration, Requests: 20000},
		func(i int) (*http.Request, error) { return http.NewRequest(http.MethodGet, links[i%len(links)], nil) })
	if err != nil {
		return err
	}
	b.rep.add("user month report (8 conns)", res, 0, "")

	b.log("phase: all users' month report")
	var rowsInMonth int64
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM membership_history WHERE at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'`).Scan(&rowsInMonth); err != nil {
		return err
	}
	d, err := b.svc.downloadReport(ctx, "/api/v1/reports/history", fmt.Sprintf(`{"period":%q}`, period))
	if err != nil {
		return fmt.Errorf("all-users report: %w", err)
	}
	b.rep.add(fmt.Sprintf("all-users month report (%d rows)", rowsInMonth), loadgen.Result{}, d.wall,
		fmt.Sprintf("%.1f MB of CSV; API peak RSS %.0f → %.0f MB", float64(d.bytes)/1e6, d.peakBefore, d.peakAfter))
	return nil
}

// membersPhase gives a segment to every user (100 %) and downloads its
// member list as CSV three times, with the API's peak RSS before and after.
func (b *bench) membersPhase(ctx context.Context) error {
	slug := fmt.Sprintf("EVERYONE_%d", time.Now().Unix())
	b.log("phase: a 100 %% segment over %d users", b.o.users)
	assigned, err := b.createRolledOut(ctx, slug, 100)
	if err != nil {
		return err
	}
	for i := range 3 {
		b.log("phase: the member list as CSV (%d)", i+1)
		d, err := b.svc.downloadReport(ctx, "/api/v1/reports/members", fmt.Sprintf(`{"slug":%q}`, slug))
		if err != nil {
			return fmt.Errorf("members CSV: %w", err)
		}
		b.rep.add(fmt.Sprintf("members CSV (%d members)", assigned), loadgen.Result{}, d.wall,
			fmt.Sprintf("%.1f MB; API RSS %.0f MB, peak %.0f → %.0f MB", float64(d.bytes)/1e6, d.rssBefore, d.peakBefore, d.peakAfter))
	}
	return nil
}

// download is what downloadReport measured.
type download struct {
	bytes                            int64
	wall                             time.Duration
	rssBefore, peakBefore, peakAfter float64 // the API's RSS and peak RSS, MB
}

// downloadReport asks linkPath for a report link with body, then
// downloads the report and measures the download and the API's memory.
func (s *service) downloadReport(ctx context.Context, linkPath, body string) (download, error) {
	var l struct{ URL string }
	if err := callAPI(ctx, http.MethodPost, s.base+linkPath, body, &l); err != nil {
		return download{}, err
	}
	d := download{rssBefore: rssMB(s.api.Process.Pid, "VmRSS"), peakBefore: rssMB(s.api.Process.Pid, "VmHWM")}
	t0 := time.Now()
	resp, err := http.Get(s.base + l.URL)
	if err != nil {
		return d, err
	}
	d.bytes, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return d, fmt.Errorf("status %d, %v", resp.StatusCode, err)
	}
	d.wall, d.peakAfter = time.Since(t0), rssMB(s.api.Process.Pid, "VmHWM")
	return d, nil
}

// exportsPhase measures what report downloads cost everyone else: reads at
// o.rate per second with nothing else running, then again while 8 clients
// download the all-users month report and read it slowly (64 KiB every
// 100 ms, so that each export is held for the whole phase) and 40 clients
// send HEAD on the same link, each every 100 ms (before the fix, each HEAD
// ran the whole export); /readyz is asked every 100 ms meanwhile.
func (b *bench) exportsPhase(ctx context.Context) error {
	var l struct{ URL string }
	body := fmt.Sprintf(`{"period":%q}`, time.Now().UTC().Format("2006-01"))
	if err := callAPI(ctx, http.MethodPost, b.svc.base+"/api/v1/reports/history", body, &l); err != nil {
		return err
	}
	link := b.svc.base + l.URL
	b.log("phase: reads at %.0f/s, idle (exports)", b.o.rate)
	idle, err := b.reads(ctx, b.o.openLoop())
	if err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("GET at %.0f/s, idle (exports phase)", b.o.rate), idle, 0, "")

	b.log("phase: reads at %.0f/s during 8 slow downloads and 40 HEADs in a loop", b.o.rate)
	lctx, stop := context.WithCancel(ctx)
	var (
		wg                                 sync.WaitGroup
		downloads, refused, heads, unready atomic.Int64
	)
	client := &http.Client{}
	for range 8 {
		wg.Go(func() {
			for lctx.Err() == nil {
				req, _ := http.NewRequestWithContext(lctx, http.MethodGet, link, nil)
				resp, err := client.Do(req)
				if err != nil {
					continue
				}
				switch resp.StatusCode {
				case http.StatusOK:
					downloads.Add(1)
					buf := make([]byte, 64<<10)
					for lctx.Err() == nil {
						if _, err := io.ReadFull(resp.Body, buf); err != nil {
							break
						}
						time.Sleep(100 * time.Millisecond)
					}
				case http.StatusTooManyRequests:
					refused.Add(1)
					time.Sleep(time.Second)
				}
				resp.Body.Close()
			}
		})
	}
	for range 40 {
		wg.Go(func() {
			for lctx.Err() == nil {
				req, _ := http.NewRequestWithContext(lctx, http.MethodHead, link, nil)
				if resp, err := client.Do(req); err == nil {
					resp.Body.Close()
					heads.Add(1)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	wg.Go(func() {
		for lctx.Err() == nil {
			if resp, err := client.Get(b.svc.base + "/readyz"); err != nil || resp.StatusCode != http.StatusOK {
				unready.Add(1)
			} else {
				resp.Body.Close()
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	time.Sleep(time.Second) // the downloads start
	busy, err := b.reads(ctx, b.o.openLoop())
	stop()
	wg.Wait()
	if err != nil {
		return err
	}
	b.rep.add(fmt.Sprintf("GET at %.0f/s, 8 slow downloads + 40 HEADing", b.o.rate), busy, 0,
		fmt.Sprintf("p99 %.2f× idle; %d downloads streaming, %d refused (429), %d HEADs, /readyz not 200: %d",
			busy.Percentile(99).Seconds()/idle.Percentile(99).Seconds(), downloads.Load(), refused.Load(), heads.Load(), unready.Load()))
	return nil
}
