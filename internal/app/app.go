// Package app is the service's one composition root. From the
// configuration, a database pool and a Redis client, New builds
// everything a process runs: the repositories, the task client and the
// services; the HTTP router's options; and the background work — the
// cache invalidation relay and listener, the refresh of monitoring
// figures, the asynq worker with its periodic tasks, and the change event
// relay — each long-running loop run under supervise. Run does the rest
// of a process's life (connections, the HTTP server, shutdown in order);
// the serve, worker and all commands call it, and the tests build their
// stacks with New, so the service runs the same way everywhere.
package app

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/config"
	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/events"
	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/internal/metrics"
	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/internal/readcache"
	"github.com/segments-service/segments/internal/service"
	"github.com/segments-service/segments/internal/supervise"
	"github.com/segments-service/segments/internal/worker"
)

// Each store and scheduler the services declare is implemented here.
var (
	_ service.SegmentStore        = (*postgres.SegmentRepo)(nil)
	_ service.UserStore           = (*postgres.UserRepo)(nil)
	_ service.RolloutStore        = (*postgres.RolloutRepo)(nil)
	_ service.ExpiryStore         = (*postgres.ExpiryRepo)(nil)
	_ service.HistoryStore        = (*postgres.HistoryRepo)(nil)
	_ service.IdempotencyKeyStore = (*postgres.IdempotencyRepo)(nil)
	_ service.LayerStore          = (*postgres.LayerRepo)(nil)
	_ service.ImportStore         = (*postgres.ImportRepo)(nil)
	_ service.ImportScheduler     = (*worker.Client)(nil)
	_ service.ExpiryScheduler     = (*worker.Client)(nil)
	_ service.RolloutScheduler    = (*worker.Client)(nil)
	_ service.RolloutQueue        = (*worker.Client)(nil)
)

// Roles say what a process does: serve the API, run the background
// worker, or both. A process with neither still serves /healthz, /readyz
// and /metrics.
type Roles struct {
	API, Worker bool
}

// Deps are what New builds on.
type Deps struct {
	Pool *pgxpool.Pool
	// Direct, if set, is a pool of direct connections to the server for
	// what needs a session (LISTEN, session advisory locks, the relays),
	// when Pool goes through a pooler in transaction mode; nil: Pool.
	Direct *pgxpool.Pool
	// Standby, if set, is a pool on a streaming standby of Pool's server
	// (DATABASE_REPLICA_URL), for the reads that may be a little late.
	Standby *pgxpool.Pool
	Redis   *redis.Client
	// Metrics counts for monitoring; nil makes a registry of the App's
	// own.
	Metrics *metrics.Metrics
	Log     *zap.Logger
	// Now tells the services' and the read cache's time; nil means
	// time.Now.
	Now func() time.Time
}

// Services are the service's use cases.
type Services struct {
	Segments *service.Segments
	Layers   *service.Layers
	Users    *service.Users
	Reports  *service.Reports
	Expiry   *service.Expiry
	Rollouts *service.Rollouts
	// Deletions deletes segments at the time set for them.
	Deletions *service.Deletions
	// Schedules applies the steps of percent schedules at their times.
	Schedules *service.Schedules
	// Audit reads and trims the audit log.
	Audit *service.Audit
	// Imports applies lists of users to segments.
	Imports *service.Imports
	// IdempotencyKeys sweeps old Idempotency-Keys.
	IdempotencyKeys *service.IdempotencyKeys
	// Idempotency runs requests sent with an Idempotency-Key.
	Idempotency *postgres.IdempotencyRepo
	// Tasks enqueues background tasks.
	Tasks *worker.Client
	// Stats reads figures about all segments.
	Stats func(context.Context) (domain.SegmentStats, error)
}

// App is one process of the service, built and not yet started.
type App struct {
	Services *Services
	Metrics  *metrics.Metrics
	// Cache is the API's read cache; nil when the process serves no API
	// or CACHE_MAX_BYTES is 0.
	Cache *readcache.Cache

	cfg    config.Config
	deps   Deps
	roles  Roles
	router httpapi.Options
	loops  []supervise.Loop
	// standby, if set, answers the API's reads that may be a little late.
	standby  *postgres.Standby
	worker   *worker.Server
	queuesUI *asynqmon.HTTPHandler

	stop    context.CancelFunc
	running sync.WaitGroup
}

// New builds a process of the service from cfg on d. ctx bounds what
// building needs to fetch (the JWK Set of AUTH_JWKS_URL). Without
// REPORT_SECRET report links are signed with a random secret (a warning
// says so).
func New(ctx context.Context, cfg config.Config, d Deps, roles Roles) (*App, error) {
	if d.Metrics == nil {
		d.Metrics = metrics.New()
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Log == nil {
		d.Log = zap.NewNop()
	}
	if d.Direct == nil {
		d.Direct = d.Pool
	}
	a := &App{Metrics: d.Metrics, cfg: cfg, deps: d, roles: roles}
	if d.Standby != nil {
		a.standby = postgres.NewStandby(d.Pool, d.Standby, cfg.Postgres.ReplicaMaxLag, d.Metrics, d.Log.Named("standby"))
	}
	svc, err := newServices(cfg, d, a.standby)
	if err != nil {
		return nil, err
	}
	a.Services = svc
	m, log, pool, rdb := d.Metrics, d.Log, d.Pool, d.Redis
	m.WatchPool(pool)

	a.router = httpapi.Options{
		Checks: []httpapi.Check{
			{Name: "postgres", Ping: func(ctx context.Context) error { return postgres.Ready(ctx, pool) }},
			{Name: "redis", Ping: func(ctx context.Context) error { return rdb.Ping(ctx).Err() }},
		},
		Log:            log.Named("http"),
		LogRequests:    cfg.Log.Requests,
		RequestTimeout: cfg.HTTP.RequestTimeout,
		Observer:       m,
		Metrics:        m.Handler(),
		AuthObserver:   m,
	}
	if roles.API {
		if err := a.buildAPI(ctx); err != nil {
			return nil, err
		}
	}
	if cfg.Admin.QueuesUI {
		conn, err := asynq.ParseRedisURI(cfg.Redis.URL)
		if err != nil {
			return nil, fmt.Errorf("parse redis url: %w", err)
		}
		a.queuesUI = asynqmon.New(asynqmon.Options{RootPath: httpapi.QueuesUIPath, RedisConnOpt: conn})
		a.router.QueuesUI = a.queuesUI
		log.Warn("the task queues UI is on at " + httpapi.QueuesUIPath + ": it can delete and retry tasks; keep it to operators")
	}
	if roles.Worker {
		a.buildWorker()
	}
	return a, nil
}

// newServices builds the stores, the task client and the services.
func newServices(cfg config.Config, d Deps, standby *postgres.Standby) (*Services, error) {
	secret := []byte(cfg.Reports.Secret)
	if len(secret) == 0 {
		secret = make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return nil, fmt.Errorf("make a report secret: %w", err)
		}
		d.Log.Warn("REPORT_SECRET is not set: report links are signed with a random secret and work only on this process until it stops")
	}
	rec, log := d.Metrics, d.Log
	tasks := worker.NewClient(d.Redis, cfg.Worker.Queue, cfg.Worker.RolloutMaxRetry)
	segments := postgres.NewSegmentRepo(d.Pool, rec).WithStandby(standby)
	keys := postgres.NewIdempotencyRepo(d.Pool)
	segmentService := service.NewSegments(segments, tasks, d.Now, log.Named("segments"))
	return &Services{
		Segments:  segmentService,
		Schedules: service.NewSchedules(segmentService, segments, rec, log.Named("schedules")),
		Audit:     service.NewAudit(postgres.NewAuditRepo(d.Pool), cfg.AuditRetention, d.Now),
		Layers:    service.NewLayers(postgres.NewLayerRepo(d.Pool)),
		Deletions: service.NewDeletions(segments, rec, log.Named("deletions")),
		Users:     service.NewUsers(postgres.NewUserRepo(d.Pool, rec).WithStandby(standby), tasks, d.Now, log.Named("users")),
		Reports: service.NewReports(postgres.NewHistoryRepo(d.Pool, cfg.Reports.Timeout).WithStandby(standby), rec,
			secret, cfg.Reports.LinkTTL, cfg.Reports.Concurrency, d.Now),
		Expiry: service.NewExpiry(postgres.NewExpiryRepo(d.Pool, rec), log.Named("expiry")),
		Rollouts: service.NewRollouts(postgres.NewRolloutRepo(d.Pool, rec).WithSessions(d.Direct), tasks, service.RolloutSettings{
			Workers: cfg.Worker.RolloutWorkers, Batch: cfg.Worker.RolloutBatch, Rate: cfg.Worker.RolloutRate,
		}, log.Named("rollouts")),
		Imports: service.NewImports(postgres.NewImportRepo(d.Pool, rec, cfg.Worker.ImportUploadTimeout).WithSessions(d.Direct), tasks, rec,
			service.ImportSettings{Batch: cfg.Worker.ImportBatch, Rate: cfg.Worker.ImportRate}, d.Now, log.Named("imports")),
		IdempotencyKeys: service.NewIdempotencyKeys(keys, cfg.IdempotencyTTL, d.Now),
		Idempotency:     keys,
		Tasks:           tasks,
		Stats:           segments.Stats,
	}, nil
}

// buildAPI adds what serving the API needs: the use cases in the router,
// the read cache and the loops that keep it coherent, the token verifier,
// and the refresh of the figures only the API exports.
func (a *App) buildAPI(ctx context.Context) error {
	cfg, d, svc := a.cfg, a.deps, a.Services
	o := &a.router
	o.Segments, o.Layers, o.Users, o.Reports, o.Imports, o.Audit = svc.Segments, svc.Layers, svc.Users, svc.Reports, svc.Imports, svc.Audit
	o.UploadTimeout = cfg.Worker.ImportUploadTimeout
	o.Idempotency, o.IdempotencyObserver = svc.Idempotency, d.Metrics
	o.ReportTimeout, o.PublicURL = cfg.Reports.Timeout, cfg.Reports.PublicURL
	o.ReadsRegister = cfg.Users.ReadsRegister
	var err error
	if o.Auth, err = newVerifier(ctx, cfg.Auth, d.Log); err != nil {
		return err
	}

	pg := d.Direct.Config().ConnConfig
	log := d.Log.Named("cache")
	// Every API process takes part in relaying the changes queued for the
	// caches (one relays at a time), whether or not its own cache is on.
	a.loops = append(a.loops, postgres.InvalidationRelay(pg, cfg.Cache.RelayInterval, log))
	if cfg.Cache.MaxBytes > 0 {
		a.Cache = readcache.New(cfg.Cache.MaxBytes, d.Now, d.Metrics)
		o.Cache = a.Cache
		d.Metrics.WatchCache(a.Cache)
	}
	switch {
	case a.standby != nil:
		// The standby is read only as far as the invalidations heard say
		// it may: the listener runs with or without a cache.
		var c postgres.Invalidator
		if a.Cache != nil {
			c = a.Cache
		}
		a.loops = append(a.loops,
			postgres.InvalidationListener(pg, a.standby.Invalidator(c), d.Metrics, a.standby.Heard, d.Now, log),
			a.standby.Monitor(250*time.Millisecond))
		o.WriteFence = a.standby
	case a.Cache != nil:
		a.loops = append(a.loops, postgres.InvalidationListener(pg, a.Cache, d.Metrics, nil, d.Now, log))
	}
	queue := metrics.AsynqQueueSizes(asynq.NewInspectorFromRedisClient(d.Redis), cfg.Worker.Queue)
	a.loops = append(a.loops, d.Metrics.FiguresLoop(queue, svc.Stats))
	return nil
}

// buildWorker adds the asynq worker and the change event relay.
func (a *App) buildWorker() {
	cfg, d := a.cfg, a.deps
	a.worker = worker.NewServer(redisConnOpt(cfg.Redis, d.Redis), worker.Config{
		Concurrency:     cfg.Worker.Concurrency,
		Queue:           cfg.Worker.Queue,
		ShutdownTimeout: cfg.ShutdownTimeout,
		SweepInterval:   cfg.Worker.SweepInterval,
		SweepBatch:      cfg.Worker.SweepBatch,
	}, worker.Services{
		Expiry: a.Services.Expiry, Rollouts: a.Services.Rollouts,
		IdempotencyKeys: a.Services.IdempotencyKeys, Deletions: a.Services.Deletions, Imports: a.Services.Imports,
		Schedules: a.Services.Schedules, Audit: a.Services.Audit,
	}, d.Metrics, d.Log)
	a.loops = append(a.loops, postgres.MemberCountFolder(d.Pool, time.Second))
	if !cfg.Events.Enabled {
		d.Log.Warn("EVENTS_ENABLED=false: change events are not published; they wait in the database until it is on")
		return
	}
	relay := events.NewRelay(events.Config{
		Stream: cfg.Events.Stream, MaxLen: cfg.Events.MaxLen, Batch: cfg.Events.Batch, Interval: cfg.Events.Interval,
		WaitReplicas: cfg.Events.WaitReplicas,
	}, d.Direct.Config().ConnConfig, d.Redis, d.Metrics, d.Log.Named("events"))
	a.loops = append(a.loops, relay.Loop())
}

// RouterOptions are the HTTP router's options as this process serves
// them.
func (a *App) RouterOptions() httpapi.Options { return a.router }

// Handler is the HTTP router as this process serves it.
func (a *App) Handler() http.Handler { return httpapi.NewRouter(a.router) }

// Start starts the background work: every loop under supervise, and the
// asynq worker if this process runs it. Stop stops it.
func (a *App) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	a.stop = cancel
	for _, l := range a.loops {
		a.running.Go(func() { supervise.Run(ctx, l, a.Metrics, a.deps.Log) })
	}
	if a.worker != nil {
		if err := a.worker.Start(); err != nil {
			a.Stop()
			return err
		}
	}
	return nil
}

// Stop stops the asynq worker (tasks in flight get SHUTDOWN_TIMEOUT to
// finish) and then the loops, and waits for them. It does not close the
// pool or the Redis client, which the caller owns.
func (a *App) Stop() {
	if a.worker != nil {
		a.worker.Shutdown()
		a.worker = nil
	}
	if a.stop != nil {
		a.stop()
		a.running.Wait()
		a.stop = nil
	}
	if a.queuesUI != nil {
		a.queuesUI.Close()
		a.queuesUI = nil
	}
}

// newVerifier returns the token verifier cfg asks for, or nil (with a
// warning) if authentication is off.
func newVerifier(ctx context.Context, cfg config.Auth, log *zap.Logger) (*auth.Verifier, error) {
	if !cfg.Enabled() {
		log.Warn("authentication is off: every caller may do everything; set AUTH_JWT_SECRET or AUTH_JWKS_URL to turn it on")
		return nil, nil
	}
	v, err := auth.New(ctx, auth.Config{
		Secret: []byte(cfg.JWTSecret), JWKSURL: cfg.JWKSURL, Issuer: cfg.Issuer, Audience: cfg.Audience,
		Leeway: cfg.Leeway, JWKSRefresh: cfg.JWKSRefresh, JWKSUnknownKIDRefresh: cfg.JWKSUnknownKIDRefresh,
		JWKSAllowHTTP: cfg.JWKSAllowHTTP, Log: log.Named("auth"),
	})
	if err != nil {
		return nil, err
	}
	log.Info("authentication is on", zap.Bool("hs256", cfg.JWTSecret != ""), zap.String("jwks_url", cfg.JWKSURL),
		zap.String("issuer", cfg.Issuer), zap.String("audience", cfg.Audience))
	return v, nil
}

// redisConnOpt names rdb's server and settings for asynq's server and
// scheduler, which open (and close) connections of their own: with
// Sentinel, the sentinels (asynq then follows the master as rdb does).
func redisConnOpt(c config.Redis, rdb *redis.Client) asynq.RedisConnOpt {
	o := rdb.Options()
	if c.SentinelMaster != "" {
		return asynq.RedisFailoverClientOpt{MasterName: c.SentinelMaster, SentinelAddrs: c.SentinelAddrs,
			SentinelPassword: c.SentinelPassword, Username: o.Username, Password: o.Password, DB: o.DB,
			DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout, TLSConfig: o.TLSConfig}
	}
	return asynq.RedisClientOpt{Network: o.Network, Addr: o.Addr, Username: o.Username, Password: o.Password,
		DB: o.DB, DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout, TLSConfig: o.TLSConfig}
}
