// Package app wires the service together: from configuration, a database
// pool and a Redis client it builds the repositories, the task client and
// the services. The serve, worker and all commands and the tests all use
// New, so the service runs the same way everywhere.
package app

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/config"
	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/events"
	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/internal/service"
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
	_ service.ExpiryScheduler     = (*worker.Client)(nil)
	_ service.RolloutScheduler    = (*worker.Client)(nil)
	_ service.RolloutQueue        = (*worker.Client)(nil)
)

// Recorder counts what the stores and services do; metrics.Metrics is one.
type Recorder interface {
	postgres.Recorder
	service.Recorder
	service.DeletionRecorder
}

// Nop counts nothing.
type Nop struct{ postgres.NopRecorder }

// ReportDownloaded does nothing.
func (Nop) ReportDownloaded(bool, bool) {}

// SegmentDeletedOnSchedule does nothing.
func (Nop) SegmentDeletedOnSchedule(string) {}

// Deps are what New builds on.
type Deps struct {
	Pool  *pgxpool.Pool
	Redis redis.UniversalClient
	// Recorder counts for monitoring; nil counts nothing.
	Recorder Recorder
	Log      *zap.Logger
	// Now tells the time; nil means time.Now.
	Now func() time.Time
}

// Services are the service's use cases and what monitoring reads.
type Services struct {
	Segments *service.Segments
	Users    *service.Users
	Reports  *service.Reports
	Expiry   *service.Expiry
	Rollouts *service.Rollouts
	// Deletions deletes segments at the time set for them.
	Deletions *service.Deletions
	// IdempotencyKeys sweeps old Idempotency-Keys.
	IdempotencyKeys *service.IdempotencyKeys
	// Idempotency runs requests sent with an Idempotency-Key.
	Idempotency *postgres.IdempotencyRepo
	// Tasks enqueues background tasks.
	Tasks *worker.Client
	// Stats reads figures about all segments.
	Stats func(context.Context) (domain.SegmentStats, error)
}

// New builds the services from cfg on d. Without REPORT_SECRET it signs
// report links with a random secret and logs a warning.
func New(cfg config.Config, d Deps) (*Services, error) {
	if d.Recorder == nil {
		d.Recorder = Nop{}
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	secret := []byte(cfg.Reports.Secret)
	if len(secret) == 0 {
		secret = make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return nil, fmt.Errorf("make a report secret: %w", err)
		}
		d.Log.Warn("REPORT_SECRET is not set: report links are signed with a random secret and work only on this process until it stops")
	}

	tasks := worker.NewClient(d.Redis, cfg.Worker.Queue, cfg.Worker.RolloutMaxRetry)
	segments := postgres.NewSegmentRepo(d.Pool, d.Recorder)
	keys := postgres.NewIdempotencyRepo(d.Pool)
	return &Services{
		Segments:  service.NewSegments(segments, tasks, d.Now, d.Log.Named("segments")),
		Deletions: service.NewDeletions(segments, d.Recorder, d.Log.Named("deletions")),
		Users:     service.NewUsers(postgres.NewUserRepo(d.Pool, d.Recorder), tasks, d.Now, d.Log.Named("users")),
		Reports: service.NewReports(postgres.NewHistoryRepo(d.Pool, cfg.Reports.Timeout), d.Recorder,
			secret, cfg.Reports.LinkTTL, d.Now),
		Expiry: service.NewExpiry(postgres.NewExpiryRepo(d.Pool, d.Recorder), d.Log.Named("expiry")),
		Rollouts: service.NewRollouts(postgres.NewRolloutRepo(d.Pool, d.Recorder), tasks, service.RolloutSettings{
			Workers: cfg.Worker.RolloutWorkers, Batch: cfg.Worker.RolloutBatch, Rate: cfg.Worker.RolloutRate,
		}, d.Log.Named("rollouts")),
		IdempotencyKeys: service.NewIdempotencyKeys(keys, cfg.IdempotencyTTL, d.Now),
		Idempotency:     keys,
		Tasks:           tasks,
		Stats:           segments.Stats,
	}, nil
}

// WorkerConfig is the worker's part of cfg.
func WorkerConfig(cfg config.Config) worker.Config {
	return worker.Config{
		Concurrency:     cfg.Worker.Concurrency,
		Queue:           cfg.Worker.Queue,
		ShutdownTimeout: cfg.ShutdownTimeout,
		SweepInterval:   cfg.Worker.SweepInterval,
		SweepBatch:      cfg.Worker.SweepBatch,
	}
}

// EventsConfig is the change event relay's part of cfg.
func EventsConfig(cfg config.Config) events.Config {
	return events.Config{Stream: cfg.Events.Stream, MaxLen: cfg.Events.MaxLen, Batch: cfg.Events.Batch, Interval: cfg.Events.Interval}
}

// WorkerServices are what the worker's handlers call.
func (s *Services) WorkerServices() worker.Services {
	return worker.Services{Expiry: s.Expiry, Rollouts: s.Rollouts, IdempotencyKeys: s.IdempotencyKeys, Deletions: s.Deletions}
}
