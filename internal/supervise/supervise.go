// Package supervise runs the service's long-running loops (the cache
// invalidation relay and listener, the change event relay, the refresh of
// monitoring figures) the one way they all run: restarted with backoff
// when they fail, stopped when their context ends, with a log line and a
// metric for every restart.
package supervise

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
)

// Loop is a long-running piece of background work.
type Loop struct {
	// Name labels its log lines and its restart metric ("cache_listener").
	Name string
	// Run does the work until ctx ends or something fails (a lost
	// connection, say); it returns why. Run is called again after a
	// failure, so it starts from scratch each time: it opens what it needs
	// and closes it before returning.
	Run func(ctx context.Context) error
	// Stopped, if set, is called each time Run has returned, before the
	// wait to restart it: the place to stop serving what the loop keeps
	// up to date.
	Stopped func()
}

// Recorder counts restarts; metrics.Metrics is one.
type Recorder interface {
	LoopRestarted(name string)
}

// Backoff between restarts: the first restart comes after MinDelay, each
// restart after a run shorter than ResetAfter doubles the wait up to
// MaxDelay, and a run that lasted ResetAfter or longer starts again from
// MinDelay.
const (
	MinDelay   = time.Second
	MaxDelay   = 5 * time.Second
	ResetAfter = 30 * time.Second
)

// Run runs l until ctx ends, restarting it after each failure. It returns
// when ctx has ended and l's last run has returned.
func Run(ctx context.Context, l Loop, rec Recorder, log *zap.Logger) {
	log = log.With(zap.String("loop", l.Name))
	delay := MinDelay
	for {
		start := time.Now()
		err := l.Run(ctx)
		if l.Stopped != nil {
			l.Stopped()
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("returned without an error")
		}
		if time.Since(start) >= ResetAfter {
			delay = MinDelay
		}
		log.Warn("background loop stopped; restarting", zap.Duration("after", delay), zap.Error(err))
		if rec != nil {
			rec.LoopRestarted(l.Name)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, MaxDelay)
	}
}
