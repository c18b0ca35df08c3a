package httpapi

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/domain"
)

// checkTimeout bounds each readiness check.
const checkTimeout = 2 * time.Second

// Check is one dependency that must answer for the service to be ready.
type Check struct {
	Name string
	Ping func(context.Context) error
}

// Health is the body of /healthz and /readyz.
type Health struct {
	Status string `json:"status" enums:"ok,unavailable"`
	// Checks maps each dependency to "ok", or to "unavailable" and, where
	// the service itself found why, that reason ("the database is
	// read-only …"); how a dependency failed (addresses, users, driver
	// messages) goes to the log only.
	Checks map[string]string `json:"checks,omitempty"`
}

// checkVerdict is what /readyz shows of a check's error: a reason the
// service phrased itself (a *domain.Error) or just "unavailable".
func checkVerdict(err error) string {
	var de *domain.Error
	if errors.As(err, &de) {
		return "unavailable: " + de.Message
	}
	return "unavailable"
}

// healthz answers while the process can serve HTTP at all.
func (h *handler) healthz(w http.ResponseWriter, r *http.Request) {
	respond(w, http.StatusOK, Health{Status: "ok"})
}

// readyz asks every dependency at once and answers 503, naming the ones
// that failed, unless all answer within checkTimeout.
func (h *handler) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
	defer cancel()

	res := Health{Status: "ok", Checks: make(map[string]string, len(h.checks))}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for _, c := range h.checks {
		wg.Go(func() {
			msg := "ok"
			err := c.Ping(ctx)
			if err != nil {
				msg = checkVerdict(err)
				loggerFrom(r.Context()).Warn("not ready", zap.String("dependency", c.Name), zap.Error(err))
			}
			mu.Lock()
			res.Checks[c.Name] = msg
			mu.Unlock()
		})
	}
	wg.Wait()

	status := http.StatusOK
	for _, msg := range res.Checks {
		if msg != "ok" {
			res.Status, status = "unavailable", http.StatusServiceUnavailable
		}
	}
	respond(w, status, res)
}
