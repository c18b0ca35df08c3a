package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/net/netutil"

	"github.com/segments-service/segments/internal/config"
	"github.com/segments-service/segments/internal/postgres"
)

// Run is a whole process of the service: it connects to PostgreSQL and
// Redis, builds the process with New, serves HTTP on HTTP_ADDR and runs
// the background work until ctx ends (or the HTTP server fails); then it
// shuts down in order: HTTP (requests in flight get SHUTDOWN_TIMEOUT),
// the worker, the loops, Redis, PostgreSQL.
func Run(ctx context.Context, cfg config.Config, log *zap.Logger, roles Roles) error {
	shown := cfg.Redacted()
	log.Info("starting", zap.Bool("api", roles.API), zap.Bool("worker", roles.Worker),
		zap.String("http_addr", shown.HTTP.Addr), zap.String("database_url", shown.Postgres.URL),
		zap.String("redis_url", shown.Redis.URL), zap.String("log_level", shown.Log.Level))

	pool, err := postgres.Open(ctx, cfg.Postgres.URL, postgres.PoolConfig{
		MaxConns:         cfg.Postgres.MaxConns,
		StatementTimeout: cfg.Postgres.StatementTimeout,
		ExecMode:         cfg.Postgres.ExecMode,
	})
	if err != nil {
		return err
	}
	defer pool.Close()
	// Sessions of their own (LISTEN, claims, the relays) go to the server
	// itself when DATABASE_URL is a pooler.
	direct := pool
	if cfg.Postgres.DirectURL != cfg.Postgres.URL {
		// A connection a claim of a rollout or an import (the relays and
		// the listener open their own).
		if direct, err = postgres.Open(ctx, cfg.Postgres.DirectURL, postgres.PoolConfig{
			MaxConns:         int32(cfg.Worker.Concurrency + 2),
			StatementTimeout: cfg.Postgres.StatementTimeout,
		}); err != nil {
			return fmt.Errorf("DATABASE_DIRECT_URL: %w", err)
		}
		defer direct.Close()
	}
	rdb, err := OpenRedis(cfg.Redis)
	if err != nil {
		return err
	}
	defer rdb.Close()

	// The standby may be down at the start: its pool connects when used,
	// and reads go to the primary until it answers.
	var standby *pgxpool.Pool
	if cfg.Postgres.ReplicaURL != "" && roles.API {
		if standby, err = postgres.OpenLazy(cfg.Postgres.ReplicaURL, postgres.PoolConfig{
			MaxConns:         cfg.Postgres.MaxConns,
			StatementTimeout: cfg.Postgres.StatementTimeout,
			ExecMode:         cfg.Postgres.ExecMode,
		}); err != nil {
			return fmt.Errorf("DATABASE_REPLICA_URL: %w", err)
		}
		defer standby.Close()
	}
	a, err := New(ctx, cfg, Deps{Pool: pool, Direct: direct, Standby: standby, Redis: rdb, Log: log}, roles)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	srv, err := serveHTTP(cfg.HTTP, log, a.Handler(), errc)
	if err != nil {
		return err
	}
	if err := a.Start(); err != nil {
		_ = srv.Close()
		return err
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
	a.Stop()
	log.Info("stopped")
	return err
}

// serveHTTP listens on c.Addr and serves handler in the background; a
// failure of the server goes to errc.
func serveHTTP(c config.HTTP, log *zap.Logger, handler http.Handler, errc chan<- error) (*http.Server, error) {
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", c.Addr, err)
	}
	ln = netutil.LimitListener(ln, c.MaxConns)
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: c.ReadHeaderTimeout,
		ReadTimeout:       c.ReadTimeout,
		WriteTimeout:      c.WriteTimeout,
		IdleTimeout:       c.IdleTimeout,
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

// Redis timeouts of every client the service opens.
const (
	redisDialTimeout = 2 * time.Second
	redisIOTimeout   = 3 * time.Second
)

// OpenRedis returns a client of the Redis that c names, with the
// service's timeouts: REDIS_URL's server, or with Sentinel the master the
// sentinels name now, followed through a failover (go-redis's failover
// client asks the sentinels again when the master changes or stops
// answering).
func OpenRedis(c config.Redis) (*redis.Client, error) {
	opt, err := redis.ParseURL(c.URL)
	if err != nil {
		return nil, fmt.Errorf("parse redis url: %w", err)
	}
	if c.SentinelMaster != "" {
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: c.SentinelMaster, SentinelAddrs: c.SentinelAddrs, SentinelPassword: c.SentinelPassword,
			Username: opt.Username, Password: opt.Password, DB: opt.DB, TLSConfig: opt.TLSConfig,
			DialTimeout: redisDialTimeout, ReadTimeout: redisIOTimeout, WriteTimeout: redisIOTimeout,
		}), nil
	}
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = redisDialTimeout, redisIOTimeout, redisIOTimeout
	return redis.NewClient(opt), nil
}
