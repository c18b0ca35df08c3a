package config_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"segments/internal/config"
)

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestDefaultsWorkLocally(t *testing.T) {
	c, err := config.Load(env())
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP.Addr != "127.0.0.1:8080" || !strings.Contains(c.Postgres.URL, "127.0.0.1:5432") ||
		c.Redis.URL != "redis://127.0.0.1:6379/0" || c.Log.Level != "info" || c.Postgres.MaxConns != 32 {
		t.Errorf("defaults: %+v", c)
	}
}

func TestLoadReadsEveryKind(t *testing.T) {
	c, err := config.Load(env("HTTP_ADDR", ":9000", "DATABASE_MAX_CONNS", "8", "SHUTDOWN_TIMEOUT", "3s", "LOG_FORMAT", "console"))
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP.Addr != ":9000" || c.Postgres.MaxConns != 8 || c.ShutdownTimeout != 3*time.Second || c.Log.Format != "console" {
		t.Errorf("config: %+v", c)
	}
}

func TestLoadReportsEveryBadValue(t *testing.T) {
	_, err := config.Load(env("DATABASE_MAX_CONNS", "0", "SHUTDOWN_TIMEOUT", "soon", "LOG_LEVEL", "loud"))
	if err == nil {
		t.Fatal("bad values accepted")
	}
	for _, key := range []string{"DATABASE_MAX_CONNS", "SHUTDOWN_TIMEOUT", "LOG_LEVEL"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error %q does not name %s", err, key)
		}
	}
}

func TestRedactedMasksPasswords(t *testing.T) {
	c, err := config.Load(env("DATABASE_URL", "postgres://u:hunter2@db:5432/x", "REDIS_URL", "redis://:s3cret@cache:6379/0"))
	if err != nil {
		t.Fatal(err)
	}
	r := c.Redacted()
	for _, s := range []string{r.Postgres.URL, r.Redis.URL} {
		if strings.Contains(s, "hunter2") || strings.Contains(s, "s3cret") {
			t.Errorf("secret in %q", s)
		}
	}
	if !strings.Contains(c.Postgres.URL, "hunter2") {
		t.Error("Redacted changed the original")
	}
}

// TestEveryKeyIsInEnvExample checks that .env.example lists every key Load
// reads, and no other.
func TestEveryKeyIsInEnvExample(t *testing.T) {
	read := map[string]bool{}
	if _, err := config.Load(func(k string) string { read[k] = true; return "" }); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("../../.env.example")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, _, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(strings.TrimSpace(line), "#") {
			documented[k] = true
		}
	}
	for k := range read {
		if !documented[k] {
			t.Errorf("%s is read but not in .env.example", k)
		}
	}
	for k := range documented {
		if !read[k] {
			t.Errorf(".env.example lists %s, which nothing reads", k)
		}
	}
}
