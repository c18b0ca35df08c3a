// Package worker runs the service's background tasks on asynq: task type
// names, task constructors, and handlers that call the same service methods
// the API calls.
package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Config tunes the asynq server.
type Config struct {
	// Concurrency is how many tasks run at once.
	Concurrency int
	// Queue is the queue the server reads and the client writes.
	Queue string
	// ShutdownTimeout is how long a task in flight may finish on shutdown
	// before it is handed back to the queue for a retry.
	ShutdownTimeout time.Duration
}

// Server is an asynq server with the service's handlers.
type Server struct {
	srv *asynq.Server
	mux *asynq.ServeMux
	log *zap.Logger
}

// NewServer returns a Server reading cfg.Queue on rdb.
func NewServer(rdb redis.UniversalClient, cfg Config, log *zap.Logger) *Server {
	log = log.Named("worker")
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:     cfg.Concurrency,
		Queues:          map[string]int{cfg.Queue: 1},
		ShutdownTimeout: cfg.ShutdownTimeout,
		Logger:          zapLogger{log.Sugar()},
		ErrorHandler: asynq.ErrorHandlerFunc(func(ctx context.Context, t *asynq.Task, err error) {
			retried, _ := asynq.GetRetryCount(ctx)
			maxRetry, _ := asynq.GetMaxRetry(ctx)
			log.Error("task failed", zap.String("type", t.Type()), zap.Int("retry", retried),
				zap.Int("max_retry", maxRetry), zap.Error(err))
		}),
	})
	return &Server{srv: srv, mux: asynq.NewServeMux(), log: log}
}

// Start starts processing tasks in the background.
func (s *Server) Start() error {
	if err := s.srv.Start(s.mux); err != nil {
		return fmt.Errorf("start asynq server: %w", err)
	}
	return nil
}

// Shutdown stops taking tasks and waits for those in flight, up to the
// configured timeout; unfinished ones go back to the queue.
func (s *Server) Shutdown() { s.srv.Shutdown() }

// zapLogger adapts zap to asynq's logger.
type zapLogger struct{ s *zap.SugaredLogger }

func (l zapLogger) Debug(args ...any) { l.s.Debug(args...) }
func (l zapLogger) Info(args ...any)  { l.s.Info(args...) }
func (l zapLogger) Warn(args ...any)  { l.s.Warn(args...) }
func (l zapLogger) Error(args ...any) { l.s.Error(args...) }
func (l zapLogger) Fatal(args ...any) { l.s.Fatal(args...) }
