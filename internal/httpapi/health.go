package httpapi

import (
	"context"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"
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
	// Checks maps each dependency to "ok" or what went wrong.
	Checks map[string]string `json:"checks,omitempty"`
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
			if err := c.Ping(ctx); err != nil {
				msg = err.Error()
			}
			mu.Lock()
			res.Checks[c.Name] = msg
			mu.Unlock()
		})
	}
	wg.Wait()

	status := http.StatusOK
	for name, msg := range res.Checks {
		if msg != "ok" {
			res.Status, status = "unavailable", http.StatusServiceUnavailable
			loggerFrom(r.Context()).Warn("not ready", zap.String("dependency", name), zap.String("error", msg))
		}
	}
	respond(w, status, res)
}
