// Command segments is the segments service: the HTTP API, the background
// worker and the schema migrations, chosen by subcommand.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/netutil"

	"github.com/segments-service/segments/internal/app"
	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/config"
	"github.com/segments-service/segments/internal/events"
	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/internal/metrics"
	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/internal/readcache"
	"github.com/segments-service/segments/internal/worker"
)

const usage = `usage: segments <command>

commands:
  serve            run the HTTP API
  worker           run the background worker (asynq server)
  all              run the API and the worker in one process
  migrate up       apply every pending migration
  migrate down     roll back the newest migration
  migrate version  print the schema version
  probe [path]     GET path (default /healthz) on HTTP_ADDR; exit 0 on 200
                   (a container health check: the image has no shell)
  token [--scope "segments:read segments:write segments:admin"] [--ttl 1h] [--sub name]
                   print an HS256 token signed with AUTH_JWT_SECRET

Configuration comes from environment variables; see .env.example.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "segments:", err)
		os.Exit(1)
	}
}

// run is the whole program; main only supplies the process's environment.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) < 2 {
		fmt.Fprint(stdout, usage)
		return errors.New("no command given")
	}
	cfg, err := config.Load(getenv)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	log, err := newLogger(cfg.Log, stdout)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	switch cmd := args[1]; cmd {
	case "migrate":
		return migrateCmd(cfg, args[2:], stdout)
	case "serve", "worker", "all":
		return serve(ctx, cfg, log, cmd != "worker", cmd != "serve")
	case "probe":
		return probe(ctx, cfg, args[2:], stdout)
	case "token":
		return tokenCmd(cfg, args[2:], stdout, time.Now())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stdout, usage)
		return fmt.Errorf("unknown command %q", cmd)
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
	})
	if err != nil {
		return nil, err
	}
	log.Info("authentication is on", zap.Bool("hs256", cfg.JWTSecret != ""), zap.String("jwks_url", cfg.JWKSURL),
		zap.String("issuer", cfg.Issuer), zap.String("audience", cfg.Audience))
	return v, nil
}

func migrateCmd(cfg config.Config, args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return errors.New("migrate wants one of: up, down, version")
	}
	var (
		version uint
		dirty   bool
		err     error
	)
	switch args[0] {
	case "up", "down":
		version, dirty, err = postgres.Migrate(cfg.Postgres.URL, args[0])
	case "version":
		version, dirty, err = postgres.MigrationVersion(cfg.Postgres.URL)
	default:
		return fmt.Errorf("unknown migrate command %q (want up, down or version)", args[0])
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "schema version %d", version)
	if dirty {
		fmt.Fprint(stdout, " (dirty: a migration failed half-way; fix it by hand)")
	}
	fmt.Fprintln(stdout)
	return nil
}

// serve runs the API, the worker, or both, until ctx ends; then it shuts
// down in order: HTTP, worker, Redis, Postgres. A worker alone still
// serves /healthz, /readyz and /metrics on HTTP_ADDR.
func serve(ctx context.Context, cfg config.Config, log *zap.Logger, api, work bool) error {
	shown := cfg.Redacted()
	log.Info("starting", zap.Bool("api", api), zap.Bool("worker", work),
		zap.String("http_addr", shown.HTTP.Addr), zap.String("database_url", shown.Postgres.URL),
		zap.String("redis_url", shown.Redis.URL), zap.String("log_level", shown.Log.Level))

	pool, err := postgres.Open(ctx, cfg.Postgres.URL, postgres.PoolConfig{
		MaxConns:         cfg.Postgres.MaxConns,
		StatementTimeout: cfg.Postgres.StatementTimeout,
	})
	if err != nil {
		return err
	}
	defer pool.Close()

	rdb, err := openRedis(cfg.Redis.URL)
	if err != nil {
		return err
	}
	defer rdb.Close()

	m := metrics.New()
	m.WatchPool(pool)
	svc, err := app.New(cfg, app.Deps{Pool: pool, Redis: rdb, Recorder: m, Log: log})
	if err != nil {
		return err
	}
	opts := httpapi.Options{
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
	bg, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	var background sync.WaitGroup
	defer background.Wait()
	defer stopBackground()
	if api {
		// The API serves the use cases, and exports the figures only it
		// exports (queue sizes, business figures).
		opts.Segments, opts.Users, opts.Reports = svc.Segments, svc.Users, svc.Reports
		opts.Idempotency, opts.IdempotencyObserver = svc.Idempotency, m
		// Every API process takes part in relaying the changes queued for
		// the caches (one relays at a time), whether or not its own cache
		// is on.
		background.Go(func() {
			postgres.RelayInvalidations(bg, pool.Config().ConnConfig, cfg.Cache.RelayInterval, log.Named("cache"))
		})
		if cfg.Cache.Size > 0 {
			opts.Cache = readcache.New(cfg.Cache.Size, time.Now, m)
			m.WatchCache(opts.Cache)
			background.Go(func() {
				postgres.ListenInvalidations(bg, pool.Config().ConnConfig.Copy(), opts.Cache, m, time.Now, log.Named("cache"))
			})
		}
		if opts.Auth, err = newVerifier(bg, cfg.Auth, log); err != nil {
			return err
		}
		opts.ReportTimeout = cfg.Reports.Timeout
		opts.PublicURL = cfg.Reports.PublicURL
		m.WatchQueue(asynq.NewInspectorFromRedisClient(rdb), cfg.Worker.Queue, log)
		m.WatchStats(svc.Stats, log)
	}
	if cfg.Admin.QueuesUI {
		conn, err := asynq.ParseRedisURI(cfg.Redis.URL)
		if err != nil {
			return fmt.Errorf("parse redis url: %w", err)
		}
		ui := asynqmon.New(asynqmon.Options{RootPath: httpapi.QueuesUIPath, RedisConnOpt: conn})
		defer ui.Close()
		opts.QueuesUI = ui
		log.Warn("the task queues UI is on at " + httpapi.QueuesUIPath + ": it can delete and retry tasks; keep it to operators")
	}

	errc := make(chan error, 1)
	srv, err := startHTTP(cfg, log, httpapi.NewRouter(opts), errc)
	if err != nil {
		return err
	}
	var wrk *worker.Server
	if work {
		wrk = worker.NewServer(redisConnOpt(rdb), app.WorkerConfig(cfg), svc.WorkerServices(), m, log)
		if err := wrk.Start(); err != nil {
			return err
		}
		if cfg.Events.Enabled {
			relay := events.NewRelay(app.EventsConfig(cfg), pool.Config().ConnConfig, rdb, m, log.Named("events"))
			background.Go(func() { relay.Run(bg) })
		} else {
			log.Warn("EVENTS_ENABLED=false: change events are not published; they wait in the database until it is on")
		}
	}

	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-errc:
		log.Error("server failed; shutting down", zap.Error(err))
	}

	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	if serr := srv.Shutdown(sctx); serr != nil {
		log.Error("http shutdown", zap.Error(serr))
	}
	cancel()
	if wrk != nil {
		wrk.Shutdown()
	}
	log.Info("stopped")
	return err
}

func startHTTP(cfg config.Config, log *zap.Logger, handler http.Handler, errc chan<- error) (*http.Server, error) {
	ln, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.HTTP.Addr, err)
	}
	ln = netutil.LimitListener(ln, cfg.HTTP.MaxConns)
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: cfg.HTTP.ReadHeaderTimeout,
		ReadTimeout:       cfg.HTTP.ReadTimeout,
		WriteTimeout:      cfg.HTTP.WriteTimeout,
		IdleTimeout:       cfg.HTTP.IdleTimeout,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	log.Info("listening", zap.String("addr", ln.Addr().String()))
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http server: %w", err)
		}
	}()
	return srv, nil
}

// probe asks this host's service for a path and succeeds on 200.
func probe(ctx context.Context, cfg config.Config, args []string, stdout io.Writer) error {
	path := "/healthz"
	if len(args) > 0 {
		path = args[0]
	}
	_, port, err := net.SplitHostPort(cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("HTTP_ADDR %q: %w", cfg.HTTP.Addr, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+port+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Fprintf(stdout, "%d %s", resp.StatusCode, body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %d", path, resp.StatusCode)
	}
	return nil
}

// redisConnOpt names rdb's server and settings for asynq's server and
// scheduler, which open (and close) connections of their own.
func redisConnOpt(rdb *redis.Client) asynq.RedisConnOpt {
	o := rdb.Options()
	return asynq.RedisClientOpt{Network: o.Network, Addr: o.Addr, Username: o.Username, Password: o.Password,
		DB: o.DB, DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout, TLSConfig: o.TLSConfig}
}

func openRedis(url string) (*redis.Client, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("parse redis url: %w", err)
	}
	opt.DialTimeout = 2 * time.Second
	opt.ReadTimeout = 3 * time.Second
	opt.WriteTimeout = 3 * time.Second
	return redis.NewClient(opt), nil
}

func newLogger(c config.Log, out io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	encCfg.EncodeDuration = zapcore.StringDurationEncoder
	enc := zapcore.NewJSONEncoder(encCfg)
	if c.Format == "console" {
		encCfg.EncodeLevel = zapcore.CapitalColorLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(out)), level)
	return zap.New(core, zap.ErrorOutput(zapcore.Lock(zapcore.AddSync(os.Stderr)))), nil
}
