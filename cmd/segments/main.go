// Command segments is the segments service: the HTTP API, the background
// worker and the schema migrations, chosen by subcommand.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"segments/internal/config"
	"segments/internal/httpapi"
	"segments/internal/postgres"
	"segments/internal/service"
	"segments/internal/worker"
)

const usage = `usage: segments <command>

commands:
  serve            run the HTTP API
  worker           run the background worker (asynq server)
  all              run the API and the worker in one process
  migrate up       apply every pending migration
  migrate down     roll back the newest migration
  migrate version  print the schema version

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
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stdout, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
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
// down in order: HTTP, worker, Redis, Postgres.
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

	tasks := worker.NewClient(rdb, cfg.Worker.Queue)
	errc := make(chan error, 2)
	var srv *http.Server
	if api {
		srv, err = startAPI(cfg, log, pool, rdb, tasks, errc)
		if err != nil {
			return err
		}
	}
	var wrk *worker.Server
	if work {
		wrk = worker.NewServer(rdb, worker.Config{
			Concurrency:     cfg.Worker.Concurrency,
			Queue:           cfg.Worker.Queue,
			ShutdownTimeout: cfg.ShutdownTimeout,
			SweepInterval:   cfg.Worker.SweepInterval,
			SweepBatch:      cfg.Worker.SweepBatch,
		}, worker.Services{
			Expiry: service.NewExpiry(postgres.NewExpiryRepo(pool), log.Named("expiry")),
			Rollouts: service.NewRollouts(postgres.NewRolloutRepo(pool), tasks,
				cfg.Worker.RolloutWorkers, cfg.Worker.RolloutBatch, log.Named("rollouts")),
		}, log)
		if err := wrk.Start(); err != nil {
			return err
		}
	}

	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-errc:
		log.Error("server failed; shutting down", zap.Error(err))
	}

	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		if serr := srv.Shutdown(sctx); serr != nil {
			log.Error("http shutdown", zap.Error(serr))
		}
		cancel()
	}
	if wrk != nil {
		wrk.Shutdown()
	}
	log.Info("stopped")
	return err
}

func startAPI(cfg config.Config, log *zap.Logger, pool *pgxpool.Pool, rdb *redis.Client, tasks *worker.Client, errc chan<- error) (*http.Server, error) {
	secret := []byte(cfg.Reports.Secret)
	if len(secret) == 0 {
		secret = make([]byte, 32)
		_, _ = rand.Read(secret)
		log.Warn("REPORT_SECRET is not set: report links are signed with a random secret and work only on this process until it stops")
	}
	router := httpapi.NewRouter(httpapi.Options{
		Segments: service.NewSegments(postgres.NewSegmentRepo(pool), tasks, log.Named("segments")),
		Users:    service.NewUsers(postgres.NewUserRepo(pool), tasks, time.Now, log.Named("users")),
		Reports: service.NewReports(postgres.NewHistoryRepo(pool, cfg.Reports.Timeout), secret,
			cfg.Reports.LinkTTL, time.Now),
		Checks: []httpapi.Check{
			{Name: "postgres", Ping: pool.Ping},
			{Name: "redis", Ping: func(ctx context.Context) error { return rdb.Ping(ctx).Err() }},
		},
		Log:            log.Named("http"),
		RequestTimeout: cfg.HTTP.RequestTimeout,
		ReportTimeout:  cfg.Reports.Timeout,
		PublicURL:      cfg.Reports.PublicURL,
	})
	ln, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.HTTP.Addr, err)
	}
	srv := &http.Server{
		Handler:           router,
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
