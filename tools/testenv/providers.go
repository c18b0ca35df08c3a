package testenv

import (
	"context"
	"os"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	tcredis "github.com/testcontainers/testcontainers-go/modules/redis"

	"github.com/segments-service/segments/tools/localserver"
)

// localProvider starts throwaway servers from the local binaries in a
// temporary directory, removed when the Env closes.
type localProvider struct{}

func (localProvider) dir(e *Env, name string) (string, error) {
	dir, err := os.MkdirTemp("", "segments-test-"+name+"-")
	if err != nil {
		return "", err
	}
	e.stops = append(e.stops, func() { _ = os.RemoveAll(dir) })
	return dir, nil
}

func (p localProvider) postgres(ctx context.Context, e *Env) (string, error) {
	dir, err := p.dir(e, "postgres")
	if err != nil {
		return "", err
	}
	pg, err := localserver.StartPostgres(ctx, localserver.PostgresOptions{
		Dir:       dir,
		Throwaway: true,
		Settings:  map[string]string{"max_connections": "300"},
	})
	if err != nil {
		return "", err
	}
	e.stops = append(e.stops, func() { _ = pg.Stop() })
	return pg.URL("postgres"), nil
}

func (p localProvider) redis(ctx context.Context, e *Env) (string, error) {
	dir, err := p.dir(e, "redis")
	if err != nil {
		return "", err
	}
	r, err := localserver.StartRedis(ctx, localserver.RedisOptions{Dir: dir})
	if err != nil {
		return "", err
	}
	e.stops = append(e.stops, func() { _ = r.Stop() })
	return r.URL(0), nil
}

// dockerAnswers reports whether a Docker engine responds, within a few
// seconds.
func dockerAnswers(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	p, err := testcontainers.NewDockerProvider()
	if err != nil {
		return false
	}
	defer p.Close()
	return p.Health(ctx) == nil
}

// dockerProvider runs the servers in containers.
type dockerProvider struct{}

func (dockerProvider) postgres(ctx context.Context, e *Env) (string, error) {
	c, err := tcpostgres.Run(ctx, "postgres:16-alpine",
		tcpostgres.WithDatabase("postgres"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies(),
	)
	if err != nil {
		return "", err
	}
	e.stops = append(e.stops, func() { _ = testcontainers.TerminateContainer(c) })
	return c.ConnectionString(ctx, "sslmode=disable")
}

func (dockerProvider) redis(ctx context.Context, e *Env) (string, error) {
	c, err := tcredis.Run(ctx, "redis:7-alpine")
	if err != nil {
		return "", err
	}
	e.stops = append(e.stops, func() { _ = testcontainers.TerminateContainer(c) })
	return c.ConnectionString(ctx)
}
