// Package metrics exposes the service's Prometheus metrics: HTTP requests,
// the database pool, the task queue, tasks, and business counts. Every
// label has a bounded set of values: route patterns, not paths; no user ids
// and no slugs.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/readcache"
	"github.com/segments-service/segments/internal/supervise"
)

const namespace = "segments"

// Metrics holds the service's metrics in a registry of its own.
type Metrics struct {
	reg                *prometheus.Registry
	httpRequests       *prometheus.CounterVec
	httpDuration       *prometheus.HistogramVec
	memberships        *prometheus.CounterVec
	reports            *prometheus.CounterVec
	tasks              *prometheus.CounterVec
	taskDuration       *prometheus.HistogramVec
	authRefused        *prometheus.CounterVec
	keyed              *prometheus.CounterVec
	scheduledDeletions *prometheus.CounterVec
	scheduleSteps      *prometheus.CounterVec
	loopRestarts       *prometheus.CounterVec
	importIDs          prometheus.Counter
	standby            standby

	cacheLookups      [readcache.Off + 1]prometheus.Counter
	cacheInvalidated  *prometheus.CounterVec
	cacheFlushes      *prometheus.CounterVec
	cacheFillsRefused prometheus.Counter
	cacheLag          prometheus.Histogram

	eventsPublished prometheus.Counter
	eventsLag       prometheus.Histogram
	eventsBacklog   prometheus.Gauge
	eventsLeading   prometheus.Gauge
}

// latencyBuckets suit a service whose reads take about a millisecond.
var latencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// New returns Metrics with the Go runtime and process collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests served, by route pattern, method and status code.",
		}, []string{"route", "method", "status"}),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "http", Name: "request_duration_seconds",
			Help:    "Time to serve an HTTP request, by route pattern and method.",
			Buckets: latencyBuckets,
		}, []string{"route", "method"}),
		memberships: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "membership_changes_total",
			Help: "Memberships that appeared (operation add) or disappeared (remove), by history reason.",
		}, []string{"operation", "reason"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "report_downloads_total",
			Help: "History report downloads, by scope (user or all) and outcome (ok or error).",
		}, []string{"scope", "outcome"}),
		tasks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "tasks", Name: "processed_total",
			Help: "Background tasks run, by type and outcome (success, deferred: retried later by design, failure).",
		}, []string{"type", "outcome"}),
		taskDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "tasks", Name: "duration_seconds",
			Help:    "Time to run a background task, by type.",
			Buckets: []float64{0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300},
		}, []string{"type"}),
		keyed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "idempotency", Name: "requests_total",
			Help: "Requests sent with an Idempotency-Key, by outcome: first (ran, response stored), replayed, in_use (409), reused (422), not_stored (not a success).",
		}, []string{"outcome"}),
		scheduledDeletions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "scheduled_deletions_total",
			Help: "Segments deleted at their delete_at, by how: task (its scheduled task) or sweep (the periodic sweep, when the task was lost).",
		}, []string{"via"}),
		scheduleSteps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "schedule_steps_total",
			Help: "Steps of percent schedules that ran, by how (task: its scheduled task; sweep: the periodic sweep, when the task was lost or the worker down) and result (applied, or failed: the layer had no room).",
		}, []string{"via", "result"}),
		loopRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "background", Name: "restarts_total",
			Help: "Restarts of a background loop after it failed (a lost connection, say), by loop.",
		}, []string{"loop"}),
		importIDs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "import", Name: "ids_applied_total",
			Help: "Listed user ids that imports applied.",
		}),
		authRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "auth", Name: "refused_total",
			Help: "Requests refused for their bearer token (401) or its scopes (403), by reason.",
		}, []string{"reason"}),
	}
	m.registerCache()
	m.registerEvents()
	m.registerStandby()
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.httpRequests, m.httpDuration, m.memberships, m.reports, m.tasks, m.taskDuration, m.authRefused, m.keyed, m.scheduledDeletions, m.scheduleSteps, m.loopRestarts, m.importIDs)
	// Every business series exists from the start, so that rates and
	// dashboards need no absent() guards.
	for _, c := range domain.Changes {
		m.memberships.WithLabelValues(string(c.Operation), string(c.Reason))
	}
	for _, scope := range []string{"user", "all"} {
		for _, outcome := range []string{"ok", "error"} {
			m.reports.WithLabelValues(scope, outcome)
		}
	}
	for _, via := range []string{"task", "sweep"} {
		m.scheduledDeletions.WithLabelValues(via)
		for _, result := range []string{"applied", "failed"} {
			m.scheduleSteps.WithLabelValues(via, result)
		}
	}
	for _, o := range []string{"first", "replayed", "in_use", "reused", "not_stored"} {
		m.keyed.WithLabelValues(o)
	}
	for _, r := range auth.Reasons {
		m.authRefused.WithLabelValues(string(r))
	}
	return m
}

func (m *Metrics) registerEvents() {
	m.eventsPublished = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "events", Name: "published_total",
		Help: "Change events appended to the Redis Stream (again after a relay died mid-batch).",
	})
	m.eventsLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "events", Name: "lag_seconds",
		Help:    "Time from a change event's at (its transaction's clock; a ttl removal's expiry) to the stream taking it.",
		Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300},
	})
	m.eventsBacklog = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "events", Name: "backlog",
		Help: "Change events written but not yet published, as the relaying process last counted (0 elsewhere).",
	})
	m.eventsLeading = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "events", Name: "relay_leading",
		Help: "1 in the one process that publishes change events, 0 in the others.",
	})
	m.reg.MustRegister(m.eventsPublished, m.eventsLag, m.eventsBacklog, m.eventsLeading)
}

// EventPublished counts an event the stream took lag after its at.
func (m *Metrics) EventPublished(lag time.Duration) {
	m.eventsPublished.Inc()
	m.eventsLag.Observe(lag.Seconds())
}

// EventBacklog sets the events not yet published.
func (m *Metrics) EventBacklog(n int64) { m.eventsBacklog.Set(float64(n)) }

// EventRelayLeading says whether this process publishes events; one that
// stops does not know the backlog any more.
func (m *Metrics) EventRelayLeading(on bool) {
	if on {
		m.eventsLeading.Set(1)
		return
	}
	m.eventsLeading.Set(0)
	m.eventsBacklog.Set(0)
}

// ScheduleStepRan counts a step of a percent schedule that ran.
func (m *Metrics) ScheduleStepRan(via, result string) {
	m.scheduleSteps.WithLabelValues(via, result).Inc()
}

// SegmentDeletedOnSchedule counts a segment deleted at its delete_at.
func (m *Metrics) SegmentDeletedOnSchedule(via string) {
	m.scheduledDeletions.WithLabelValues(via).Inc()
}

// IdempotentRequest counts a request sent with an Idempotency-Key.
func (m *Metrics) IdempotentRequest(outcome string) { m.keyed.WithLabelValues(outcome).Inc() }

// AuthRefused counts a request refused for its token.
func (m *Metrics) AuthRefused(r auth.Reason) { m.authRefused.WithLabelValues(string(r)).Inc() }

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// knownMethods bounds the method label.
var knownMethods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true}

// ObserveRequest records a served request. route is the matched pattern
// ("" for none).
func (m *Metrics) ObserveRequest(route, method string, status int, d time.Duration) {
	if route == "" {
		route = "unmatched"
	}
	if !knownMethods[method] {
		method = "other"
	}
	m.httpRequests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	m.httpDuration.WithLabelValues(route, method).Observe(d.Seconds())
}

// MembershipsChanged counts n memberships that appeared or disappeared.
func (m *Metrics) MembershipsChanged(op domain.Operation, reason domain.Reason, n int64) {
	if n > 0 {
		m.memberships.WithLabelValues(string(op), string(reason)).Add(float64(n))
	}
}

// ImportIDsApplied counts n listed ids an import applied.
func (m *Metrics) ImportIDsApplied(n int64) { m.importIDs.Add(float64(n)) }

// ReportDownloaded counts a report download.
func (m *Metrics) ReportDownloaded(allUsers, ok bool) {
	scope, outcome := "user", "ok"
	if allUsers {
		scope = "all"
	}
	if !ok {
		outcome = "error"
	}
	m.reports.WithLabelValues(scope, outcome).Inc()
}

// ObserveTask records a finished task.
func (m *Metrics) ObserveTask(taskType, outcome string, d time.Duration) {
	m.tasks.WithLabelValues(taskType, outcome).Inc()
	m.taskDuration.WithLabelValues(taskType).Observe(d.Seconds())
}

// registerCache makes the read cache's series, each of them from the start.
func (m *Metrics) registerCache() {
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "cache", Name: "lookups_total",
		Help: "Reads of a user's segments by what the read cache did: hit, miss, expired (an entry held an expired membership), not_listening (bypassed: its notifications are down) or off (CACHE_MAX_BYTES=0).",
	}, []string{"result"})
	for s := readcache.Hit; s <= readcache.Off; s++ {
		m.cacheLookups[s] = lookups.WithLabelValues(s.String())
	}
	m.cacheInvalidated = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "cache", Name: "invalidated_users_total",
		Help: "Users whose cached segments were dropped, by source: local (a write through this process, before its response) or notified (any write, through the notifications).",
	}, []string{"source"})
	m.cacheFlushes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "cache", Name: "flushes_total",
		Help: "Drops of the whole read cache, by cause: local (a segment deleted through this process), notified (a write too large to list its users), disconnect (the notification connection was lost) or finished (this process answered for the first time that a rollout or import is done).",
	}, []string{"cause"})
	for _, v := range []string{"local", "notified"} {
		m.cacheInvalidated.WithLabelValues(v)
	}
	for _, v := range []string{"local", "notified", "disconnect", "finished"} {
		m.cacheFlushes.WithLabelValues(v)
	}
	m.cacheFillsRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "cache", Name: "fills_refused_total",
		Help: "Database reads not stored in the read cache because a change of the same users overtook them.",
	})
	m.cacheLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "cache", Name: "notification_lag_seconds",
		Help:    "Time from a membership change being written to this process dropping the users it touched, through the notifications.",
		Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
	})
	m.reg.MustRegister(lookups, m.cacheInvalidated, m.cacheFlushes, m.cacheFillsRefused, m.cacheLag)
}

// CacheLookup counts a read of a user's segments by what the cache did.
func (m *Metrics) CacheLookup(s readcache.Status) { m.cacheLookups[s].Inc() }

// CacheInvalidated counts n users dropped from the read cache.
func (m *Metrics) CacheInvalidated(source string, n int) {
	m.cacheInvalidated.WithLabelValues(source).Add(float64(n))
}

// CacheFlushed counts a drop of the whole read cache.
func (m *Metrics) CacheFlushed(cause string) { m.cacheFlushes.WithLabelValues(cause).Inc() }

// CacheFillRefused counts a read not stored because a change overtook it.
func (m *Metrics) CacheFillRefused() { m.cacheFillsRefused.Inc() }

// CacheNotificationLag records how long a change took to reach this
// process's cache.
func (m *Metrics) CacheNotificationLag(d time.Duration) { m.cacheLag.Observe(d.Seconds()) }

// WatchCache exports the read cache's size and whether it is listening.
func (m *Metrics) WatchCache(c *readcache.Cache) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "cache", Name: "entries",
			Help: "Users whose segments the read cache holds.",
		}, func() float64 { n, _ := c.Size(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "cache", Name: "bytes",
			Help: "Memory the read cache's entries take (bounded by CACHE_MAX_BYTES).",
		}, func() float64 { _, b := c.Size(); return float64(b) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "cache", Name: "listening",
			Help: "1 while the read cache receives change notifications and serves; 0 while it is bypassed or off.",
		}, func() float64 {
			if c.Serving() {
				return 1
			}
			return 0
		}),
	)
}

// WatchPool exports the database pool's statistics.
func (m *Metrics) WatchPool(pool *pgxpool.Pool) {
	m.reg.MustRegister(poolCollector{pool})
}

// FiguresInterval is how often FiguresLoop reads the figures that live in
// Redis and PostgreSQL.
const FiguresInterval = 5 * time.Second

// QueueSizes returns the number of tasks in each state of the task queue
// (asynq's queue info, by state name).
type QueueSizes func(ctx context.Context) (map[string]int, error)

// FiguresLoop returns the loop that refreshes the task queue's sizes and
// the business figures (segments, rollouts) every FiguresInterval, so
// that a scrape reads memory only: no number of scrapes reaches Redis or
// PostgreSQL. A nil queue leaves the queue's sizes out.
func (m *Metrics) FiguresLoop(queue QueueSizes, stats func(context.Context) (domain.SegmentStats, error)) supervise.Loop {
	queueTasks := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "task_queue", Name: "tasks",
		Help: "Tasks in the queue, by state (refreshed every 5 s).",
	}, []string{"state"})
	segments := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "segments", Help: "Segments that exist (refreshed every 5 s).",
	})
	rollouts := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "rollouts", Help: "Percent segments by rollout status (refreshed every 5 s).",
	}, []string{"status"})
	left := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "rollout_users_left",
		Help: "Users that unfinished rollouts have yet to reach (refreshed every 5 s).",
	})
	// Layers are few (analysts create them, a handful per product area):
	// their slugs are the one label that names what users created.
	buckets := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "layer", Name: "buckets_used",
		Help: "Buckets of each layer (of 10,000) its percent segments own (refreshed every 5 s).",
	}, []string{"layer"})
	imports := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "imports", Help: "Imports by status (refreshed every 5 s).",
	}, []string{"status"})
	m.reg.MustRegister(segments, rollouts, left, buckets, imports)
	if queue != nil {
		m.reg.MustRegister(queueTasks)
	}
	refresh := func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
		defer cancel()
		s, err := stats(ctx)
		if err != nil {
			return fmt.Errorf("read business figures: %w", err)
		}
		segments.Set(float64(s.Segments))
		for _, status := range []domain.RolloutStatus{domain.RolloutPending, domain.RolloutRunning, domain.RolloutDone, domain.RolloutFailed} {
			rollouts.WithLabelValues(string(status)).Set(float64(s.Rollouts[status]))
		}
		left.Set(float64(s.RolloutUsersLeft))
		for _, status := range []domain.ImportStatus{domain.ImportPending, domain.ImportRunning, domain.ImportDone, domain.ImportFailed} {
			imports.WithLabelValues(string(status)).Set(float64(s.Imports[status]))
		}
		buckets.Reset() // a deleted layer goes
		for layer, n := range s.LayerBuckets {
			buckets.WithLabelValues(layer).Set(float64(n))
		}
		if queue == nil {
			return nil
		}
		sizes, err := queue(ctx)
		if err != nil {
			return fmt.Errorf("read the task queue's sizes: %w", err)
		}
		for state, n := range sizes {
			queueTasks.WithLabelValues(state).Set(float64(n))
		}
		return nil
	}
	return supervise.Loop{
		Name: "metrics_figures",
		Run: func(ctx context.Context) error {
			t := time.NewTicker(FiguresInterval)
			defer t.Stop()
			for {
				if err := refresh(ctx); err != nil && ctx.Err() == nil {
					return err
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-t.C:
				}
			}
		},
	}
}

// AsynqQueueSizes reads queue's sizes with inspector; a queue never written
// to has every size zero.
func AsynqQueueSizes(inspector *asynq.Inspector, queue string) QueueSizes {
	return func(context.Context) (map[string]int, error) {
		info, err := inspector.GetQueueInfo(queue)
		if err != nil {
			if !isQueueNotFound(err) {
				return nil, err
			}
			info = &asynq.QueueInfo{}
		}
		return map[string]int{"pending": info.Pending, "active": info.Active, "scheduled": info.Scheduled,
			"retry": info.Retry, "archived": info.Archived, "completed": info.Completed}, nil
	}
}

// LoopRestarted counts a restart of a background loop.
func (m *Metrics) LoopRestarted(name string) { m.loopRestarts.WithLabelValues(name).Inc() }

var (
	poolConns = prometheus.NewDesc(prometheus.BuildFQName(namespace, "db_pool", "connections"),
		"Database connections in the pool, by state.", []string{"state"}, nil)
	poolMax = prometheus.NewDesc(prometheus.BuildFQName(namespace, "db_pool", "max_connections"),
		"The pool's size limit.", nil, nil)
	poolAcquires = prometheus.NewDesc(prometheus.BuildFQName(namespace, "db_pool", "acquires_total"),
		"Connections acquired from the pool.", nil, nil)
	poolEmpty = prometheus.NewDesc(prometheus.BuildFQName(namespace, "db_pool", "empty_acquires_total"),
		"Acquires that had to wait for a connection.", nil, nil)
	poolWait = prometheus.NewDesc(prometheus.BuildFQName(namespace, "db_pool", "acquire_wait_seconds_total"),
		"Time spent acquiring connections.", nil, nil)
	poolCanceled = prometheus.NewDesc(prometheus.BuildFQName(namespace, "db_pool", "canceled_acquires_total"),
		"Acquires cancelled by their context.", nil, nil)
)

type poolCollector struct{ pool *pgxpool.Pool }

func (poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolConns, poolMax, poolAcquires, poolEmpty, poolWait, poolCanceled} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.AcquiredConns()), "acquired")
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.IdleConns()), "idle")
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.ConstructingConns()), "constructing")
	ch <- prometheus.MustNewConstMetric(poolMax, prometheus.GaugeValue, float64(s.MaxConns()))
	ch <- prometheus.MustNewConstMetric(poolAcquires, prometheus.CounterValue, float64(s.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolEmpty, prometheus.CounterValue, float64(s.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolWait, prometheus.CounterValue, s.AcquireDuration().Seconds())
	ch <- prometheus.MustNewConstMetric(poolCanceled, prometheus.CounterValue, float64(s.CanceledAcquireCount()))
}

// scrapeTimeout bounds what one refresh of the figures asks of Redis and
// PostgreSQL.
const scrapeTimeout = 2 * time.Second

// isQueueNotFound reports whether err says the queue was never written to.
func isQueueNotFound(err error) bool {
	return strings.Contains(err.Error(), "does not exist") || errors.Is(err, asynq.ErrQueueNotFound)
}
