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
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/segments-service/segments/internal/app"
	"github.com/segments-service/segments/internal/config"
	"github.com/segments-service/segments/internal/postgres"
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
		return app.Run(ctx, cfg, log, app.Roles{API: cmd != "worker", Worker: cmd != "serve"})
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
