// Package worker runs the service's background tasks on asynq: task type
// names, task constructors, the client that enqueues them, and the server
// whose handlers call the same service methods the API calls.
package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/logctx"
	"github.com/segments-service/segments/internal/service"
)

// Config tunes the asynq server and scheduler.
type Config struct {
	// Concurrency is how many tasks run at once.
	Concurrency int
	// Queue is the queue the server reads and the client writes.
	Queue string
	// ShutdownTimeout is how long a task in flight may finish on shutdown
	// before it is handed back to the queue for a retry.
	ShutdownTimeout time.Duration
	// SweepInterval is how often the sweep of expired memberships runs.
	SweepInterval time.Duration
	// SweepBatch is how many memberships one sweep transaction removes.
	SweepBatch int
}

// Services are what the task handlers call.
type Services struct {
	Expiry          *service.Expiry
	Rollouts        *service.Rollouts
	IdempotencyKeys *service.IdempotencyKeys
	Deletions       *service.Deletions
	Imports         *service.Imports
	Schedules       *service.Schedules
	Audit           *service.Audit
}

// TaskObserver records finished tasks, for monitoring; outcome is an
// Outcome.
type TaskObserver interface {
	ObserveTask(taskType, outcome string, d time.Duration)
}

// Outcome is how a task run ended.
type Outcome string

// Outcomes of a task run.
const (
	Success Outcome = "success"
	// Deferred: retried later by design (an expiry task that ran early, a
	// rollout whose batches another run holds, an import whose segment
	// another run holds); not a failure.
	Deferred Outcome = "deferred"
	Failure  Outcome = "failure"
)

// classify is the one place that decides what a task's error means: its
// outcome and, for a deferred task, when to run it again.
func classify(err error) (out Outcome, wait time.Duration) {
	var (
		early  *service.NotYetExpiredError
		notDue *service.NotDueError
	)
	switch {
	case err == nil:
		return Success, 0
	case errors.As(err, &early):
		return Deferred, early.Wait + 50*time.Millisecond
	case errors.As(err, &notDue):
		return Deferred, notDue.Wait + 50*time.Millisecond
	case errors.Is(err, service.ErrRolloutIncomplete):
		return Deferred, 5 * time.Second
	case errors.Is(err, service.ErrImportBusy):
		return Deferred, 2 * time.Second
	}
	return Failure, 0
}

// retryDelay is when a task runs again after its n-th retry: a deferred
// task when classify says; a failed rollout soon, then less often (it holds
// up a segment); anything else with asynq's default backoff.
func retryDelay(n int, err error, t *asynq.Task) time.Duration {
	out, wait := classify(err)
	switch {
	case out == Deferred:
		return wait
	case t.Type() == TypeRollout:
		return min(time.Second<<min(n, 6), time.Minute)
	}
	return asynq.DefaultRetryDelayFunc(n, err, t)
}

// Server is an asynq server with the service's handlers, and the scheduler
// of its periodic tasks.
type Server struct {
	srv    *asynq.Server
	sched  *asynq.Scheduler
	client *asynq.Client
	mux    *asynq.ServeMux
	cfg    Config
	svc    Services
	log    *zap.Logger
}

// NewServer returns a Server reading cfg.Queue on the Redis that redisOpt
// names; obs (if not nil) sees every task. The server, its scheduler and
// its client open connections of their own, which Shutdown closes.
func NewServer(redisOpt asynq.RedisConnOpt, cfg Config, svc Services, obs TaskObserver, log *zap.Logger) *Server {
	log = log.Named("worker")
	s := &Server{cfg: cfg, svc: svc, log: log, mux: asynq.NewServeMux(), client: asynq.NewClient(redisOpt)}
	s.srv = asynq.NewServer(redisOpt, asynq.Config{
		Concurrency: cfg.Concurrency,
		Queues:      map[string]int{cfg.Queue: 1},
		// Scheduled expiry and deletion tasks become due within half a
		// second of their time (asynq's default checks every 5 s).
		DelayedTaskCheckInterval: 500 * time.Millisecond,
		ShutdownTimeout:          cfg.ShutdownTimeout,
		Logger:                   zapLogger{log.Sugar()},
		LogLevel:                 asynq.WarnLevel,
		RetryDelayFunc:           retryDelay,
		IsFailure: func(err error) bool {
			out, _ := classify(err)
			return out == Failure
		},
		ErrorHandler: asynq.ErrorHandlerFunc(s.handleError),
	})
	s.sched = asynq.NewScheduler(redisOpt, &asynq.SchedulerOpts{
		Logger:   zapLogger{log.Sugar()},
		LogLevel: asynq.WarnLevel,
		EnqueueErrorHandler: func(t *asynq.Task, _ []asynq.Option, err error) {
			if !errors.Is(err, asynq.ErrDuplicateTask) {
				log.Warn("could not enqueue periodic task", zap.String("type", t.Type()), zap.Error(err))
			}
		},
	})
	s.mux.Use(func(next asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
			start := time.Now()
			err := next.ProcessTask(logctx.With(ctx, log, taskFields(ctx, t)...), t)
			if obs != nil {
				out, _ := classify(err)
				obs.ObserveTask(t.Type(), string(out), time.Since(start))
			}
			return err
		})
	})
	s.mux.HandleFunc(TypeExpireMembership, s.handleExpire)
	s.mux.HandleFunc(TypeSweepExpired, s.handleSweep)
	s.mux.HandleFunc(TypeRollout, s.handleRollout)
	s.mux.HandleFunc(TypeResumeRollouts, s.handleResumeRollouts)
	s.mux.HandleFunc(TypeSweepIdempotencyKeys, s.handleSweepIdempotencyKeys)
	s.mux.HandleFunc(TypeDeleteSegment, s.handleDeleteSegment)
	s.mux.HandleFunc(TypeSweepDeletions, s.handleSweepDeletions)
	s.mux.HandleFunc(TypeImport, s.handleImport)
	s.mux.HandleFunc(TypeResumeImports, s.handleResumeImports)
	s.mux.HandleFunc(TypeApplyStep, s.handleApplyStep)
	s.mux.HandleFunc(TypeSweepSteps, s.handleSweepSteps)
	s.mux.HandleFunc(TypeSweepAudit, s.handleSweepAudit)
	return s
}

// handleError logs a failed task; a rollout that will not be retried is
// marked failed, for the periodic resume to take up again.
func (s *Server) handleError(ctx context.Context, t *asynq.Task, err error) {
	if out, _ := classify(err); out != Failure {
		return
	}
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	log := taskLogger(ctx, s.log, t)
	log.Error("task failed", zap.Int("retry", retried), zap.Int("max_retry", maxRetry), zap.Error(err))
	if t.Type() != TypeRollout || (retried < maxRetry && !errors.Is(err, asynq.SkipRetry)) {
		return
	}
	id, perr := parseRollout(t)
	if perr != nil {
		return
	}
	if ferr := s.svc.Rollouts.Fail(context.WithoutCancel(ctx), id); ferr != nil {
		log.Error("could not mark the rollout failed", zap.Error(ferr))
		return
	}
	log.Warn("rollout failed; it will be taken up again", zap.Int64("segment_id", id))
}

// Start starts processing tasks and scheduling the sweep.
func (s *Server) Start() error {
	// One of each per interval across all workers: a duplicate within the
	// interval is refused by Unique.
	every := fmt.Sprintf("@every %s", s.cfg.SweepInterval)
	for _, t := range []*asynq.Task{NewSweepTask(), NewResumeRolloutsTask(), NewSweepIdempotencyKeysTask(), NewSweepDeletionsTask(), NewResumeImportsTask(),
		NewSweepStepsTask(), NewSweepAuditTask()} {
		_, err := s.sched.Register(every, t, asynq.Queue(s.cfg.Queue), asynq.Unique(s.cfg.SweepInterval),
			asynq.MaxRetry(0), asynq.Timeout(10*time.Minute))
		if err != nil {
			return fmt.Errorf("register %s: %w", t.Type(), err)
		}
	}
	if err := s.srv.Start(s.mux); err != nil {
		return fmt.Errorf("start asynq server: %w", err)
	}
	if err := s.sched.Start(); err != nil {
		s.srv.Shutdown()
		return fmt.Errorf("start asynq scheduler: %w", err)
	}
	// Take up at once what a killed worker left: its rollout or import
	// task stays "active" in asynq until its lease lapses and asynq's
	// recoverer looks (one to two minutes), but its claim died with it.
	// Steps of percent schedules that came due while no worker ran are
	// applied now too, not at the next sweep.
	for _, t := range []*asynq.Task{NewResumeRolloutsTask(), NewResumeImportsTask(), NewSweepStepsTask()} {
		if _, err := s.client.Enqueue(t, asynq.Queue(s.cfg.Queue), asynq.MaxRetry(0), asynq.Timeout(time.Hour)); err != nil {
			s.log.Warn("could not queue a resumption of unfinished work; the periodic one will do it", zap.String("type", t.Type()), zap.Error(err))
		}
	}
	return nil
}

// Shutdown stops scheduling, stops taking tasks and waits for those in
// flight, up to the configured timeout; unfinished ones go back to the
// queue and their transactions roll back.
func (s *Server) Shutdown() {
	s.sched.Shutdown()
	s.srv.Shutdown()
	if err := s.client.Close(); err != nil {
		s.log.Warn("close the task client", zap.Error(err))
	}
}

func (s *Server) handleExpire(ctx context.Context, t *asynq.Task) error {
	e, err := parseExpiry(t)
	if err != nil {
		return err
	}
	return s.svc.Expiry.Expire(ctx, e)
}

func (s *Server) handleSweep(ctx context.Context, _ *asynq.Task) error {
	_, err := s.svc.Expiry.Sweep(ctx, s.cfg.SweepBatch)
	return err
}

func (s *Server) handleRollout(ctx context.Context, t *asynq.Task) error {
	id, err := parseRollout(t)
	if err != nil {
		return err
	}
	return s.svc.Rollouts.Run(ctx, id)
}

func (s *Server) handleResumeRollouts(ctx context.Context, _ *asynq.Task) error {
	return s.svc.Rollouts.Resume(ctx)
}

func (s *Server) handleImport(ctx context.Context, t *asynq.Task) error {
	id, err := parseImport(t)
	if err != nil {
		return err
	}
	return s.svc.Imports.Run(ctx, id)
}

func (s *Server) handleResumeImports(ctx context.Context, _ *asynq.Task) error {
	return s.svc.Imports.Resume(ctx)
}

func (s *Server) handleDeleteSegment(ctx context.Context, t *asynq.Task) error {
	d, err := parseDeletion(t)
	if err != nil {
		return err
	}
	return s.svc.Deletions.Delete(ctx, d)
}

func (s *Server) handleSweepDeletions(ctx context.Context, _ *asynq.Task) error {
	_, err := s.svc.Deletions.Sweep(ctx)
	return err
}

func (s *Server) handleApplyStep(ctx context.Context, t *asynq.Task) error {
	st, err := parseStep(t)
	if err != nil {
		return err
	}
	return s.svc.Schedules.Apply(ctx, st)
}

func (s *Server) handleSweepSteps(ctx context.Context, _ *asynq.Task) error {
	_, err := s.svc.Schedules.Sweep(ctx)
	return err
}

func (s *Server) handleSweepAudit(ctx context.Context, _ *asynq.Task) error {
	n, err := s.svc.Audit.Sweep(ctx, s.cfg.SweepBatch)
	if n > 0 {
		s.log.Info("swept audit entries past AUDIT_RETENTION", zap.Int64("entries", n))
	}
	return err
}

func (s *Server) handleSweepIdempotencyKeys(ctx context.Context, _ *asynq.Task) error {
	n, err := s.svc.IdempotencyKeys.Sweep(ctx, s.cfg.SweepBatch)
	if n > 0 {
		s.log.Info("swept idempotency keys past their TTL", zap.Int64("keys", n))
	}
	return err
}

func taskFields(ctx context.Context, t *asynq.Task) []zap.Field {
	id, _ := asynq.GetTaskID(ctx)
	return []zap.Field{zap.String("task_type", t.Type()), zap.String("task_id", id)}
}

func taskLogger(ctx context.Context, log *zap.Logger, t *asynq.Task) *zap.Logger {
	return log.With(taskFields(ctx, t)...)
}

// zapLogger adapts zap to asynq's logger.
type zapLogger struct{ s *zap.SugaredLogger }

func (l zapLogger) Debug(args ...any) { l.s.Debug(args...) }
func (l zapLogger) Info(args ...any)  { l.s.Info(args...) }
func (l zapLogger) Warn(args ...any)  { l.s.Warn(args...) }
func (l zapLogger) Error(args ...any) { l.s.Error(args...) }
func (l zapLogger) Fatal(args ...any) { l.s.Fatal(args...) }
