package config_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/segments-service/segments/internal/config"
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

// A key the service no longer reads is refused rather than ignored:
// CACHE_SIZE=0 once turned the cache off. (TestConfigurationIsDocumented
// holds the keys Load reads to .env.example and the guide.)
func TestRetiredKeysAreRefused(t *testing.T) {
	_, err := config.Load(func(k string) string { return map[string]string{"CACHE_SIZE": "0"}[k] })
	if err == nil || !strings.Contains(err.Error(), "CACHE_SIZE is no longer read") || !strings.Contains(err.Error(), "CACHE_MAX_BYTES") {
		t.Fatalf("CACHE_SIZE=0: %v", err)
	}
}

// CACHE_MAX_BYTES takes a number of bytes, with an optional unit.
func TestCacheMaxBytes(t *testing.T) {
	for in, want := range map[string]int64{"": 256 << 20, "0": 0, "1048576": 1 << 20, "64MiB": 64 << 20, "2GiB": 2 << 30, "512KiB": -1, "3 MiB": 3 << 20, "1MB": -1, "-1": -1, "x": -1} {
		cfg, err := config.Load(func(k string) string { return map[string]string{"CACHE_MAX_BYTES": in}[k] })
		if want < 0 {
			if err == nil {
				t.Errorf("%q: accepted as %d", in, cfg.Cache.MaxBytes)
			}
			continue
		}
		if err != nil || cfg.Cache.MaxBytes != want {
			t.Errorf("%q: %d, %v; want %d", in, cfg.Cache.MaxBytes, err, want)
		}
	}
}

// TestRedactedMasksEveryFormOfPassword covers every form of connection
// string pgx and go-redis accept, and keeps what an operator needs to see.
func TestRedactedMasksEveryFormOfPassword(t *testing.T) {
	tests := []struct {
		name, db, redis string
		wantDB, want    string
	}{
		{"libpq keywords", "host=127.0.0.1 port=5432 user=segments password=SECRET dbname=segments", "redis://127.0.0.1:6379/0",
			"postgres://segments@127.0.0.1:5432/segments", "redis://127.0.0.1:6379/0"},
		{"keywords, quoted password", "host=db user=u password='SE CRET' dbname=x", "redis://:SECRET@cache:6379/2",
			"postgres://u@db:5432/x", "redis://cache:6379/2"},
		{"password in the query", "postgres://segments@host/db?password=SECRET&sslmode=disable", "redis://user:SECRET@cache:6380/1",
			"postgres://segments@host:5432/db", "redis://user@cache:6380/1"},
		{"password in the user info", "postgresql://u:SECRET@db:6543/x", "rediss://:SECRET@cache:6379/0",
			"postgres://u@db:6543/x", "rediss://cache:6379/0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := config.Load(env("DATABASE_URL", tc.db, "REDIS_URL", tc.redis))
			if err != nil {
				t.Fatal(err)
			}
			r := c.Redacted()
			if r.Postgres.URL != tc.wantDB || r.Redis.URL != tc.want {
				t.Errorf("shown as %q and %q, want %q and %q", r.Postgres.URL, r.Redis.URL, tc.wantDB, tc.want)
			}
			for _, s := range []string{r.Postgres.URL, r.Redis.URL} {
				if strings.Contains(s, "SECRET") || strings.Contains(s, "CRET") {
					t.Errorf("secret in %q", s)
				}
			}
		})
	}
	c, err := config.Load(env("DATABASE_URL", "host=db password=SECRET port=notaport"))
	if err == nil {
		if r := c.Redacted(); strings.Contains(r.Postgres.URL, "SECRET") {
			t.Errorf("an unparsable URL is shown with its secret: %q", r.Postgres.URL)
		}
	}
}

// TestRolloutRateAllowsABatchAMinute: a rate so low that a batch would
// wait more than a minute is refused; 0 (no bound) and a batch a minute
// are fine.
func TestRolloutRateAllowsABatchAMinute(t *testing.T) {
	for _, tc := range []struct {
		rate, batch string
		ok          bool
	}{
		{"0", "20000", true},
		{"334", "20000", true}, // 20,000 users in 59.9 s
		{"333", "20000", false},
		{"1", "60", true},
		{"1", "61", false},
	} {
		c, err := config.Load(env("ROLLOUT_RATE", tc.rate, "ROLLOUT_BATCH", tc.batch))
		if tc.ok && (err != nil || fmt.Sprint(c.Worker.RolloutRate) != tc.rate) {
			t.Errorf("ROLLOUT_RATE=%s ROLLOUT_BATCH=%s: %v, rate %d", tc.rate, tc.batch, err, c.Worker.RolloutRate)
		}
		if !tc.ok && (err == nil || !strings.Contains(err.Error(), "ROLLOUT_RATE")) {
			t.Errorf("ROLLOUT_RATE=%s ROLLOUT_BATCH=%s accepted: %v", tc.rate, tc.batch, err)
		}
	}
}

// TestJWKSIntervalsHaveFloors: the JWK Set is fetched for tokens naming an
// unknown key at most once a second (0 would be a fetch for each such
// token, which anyone can send) and periodically at most every 10 s; the
// error names the key and the floor.
func TestJWKSIntervalsHaveFloors(t *testing.T) {
	for _, tc := range []struct {
		key, value, floor string
	}{
		{"AUTH_JWKS_UNKNOWN_KID_INTERVAL", "0", "1s"},
		{"AUTH_JWKS_UNKNOWN_KID_INTERVAL", "999ms", "1s"},
		{"AUTH_JWKS_REFRESH_INTERVAL", "100ms", "10s"},
		{"AUTH_JWKS_REFRESH_INTERVAL", "9s", "10s"},
	} {
		_, err := config.Load(env(tc.key, tc.value))
		if err == nil || !strings.Contains(err.Error(), tc.key) || !strings.Contains(err.Error(), "from "+tc.floor) {
			t.Errorf("%s=%s: %v, want an error naming it and its floor %s", tc.key, tc.value, err, tc.floor)
		}
	}
	c, err := config.Load(env())
	if err != nil {
		t.Fatal(err)
	}
	if c.Auth.JWKSUnknownKIDRefresh != 10*time.Second || c.Auth.JWKSRefresh != 5*time.Minute {
		t.Errorf("defaults %v and %v, want 10s and 5m", c.Auth.JWKSUnknownKIDRefresh, c.Auth.JWKSRefresh)
	}
	c, err = config.Load(env("AUTH_JWKS_UNKNOWN_KID_INTERVAL", "1s", "AUTH_JWKS_REFRESH_INTERVAL", "10s"))
	if err != nil || c.Auth.JWKSUnknownKIDRefresh != time.Second || c.Auth.JWKSRefresh != 10*time.Second {
		t.Errorf("the floors themselves: %v, %v and %v", err, c.Auth.JWKSUnknownKIDRefresh, c.Auth.JWKSRefresh)
	}
}

// TestJWKSURLWantsHTTPS: an http:// JWK Set URL is refused unless
// AUTH_JWKS_ALLOW_HTTP=true (development).
func TestJWKSURLWantsHTTPS(t *testing.T) {
	_, err := config.Load(env("AUTH_JWKS_URL", "http://idp.example/jwks.json"))
	if err == nil || !strings.Contains(err.Error(), "AUTH_JWKS_URL") || !strings.Contains(err.Error(), "AUTH_JWKS_ALLOW_HTTP") {
		t.Errorf("an http:// URL: %v, want an error naming AUTH_JWKS_URL and AUTH_JWKS_ALLOW_HTTP", err)
	}
	if c, err := config.Load(env("AUTH_JWKS_URL", "HTTP://idp.example/jwks.json")); err == nil {
		t.Errorf("an HTTP:// URL accepted: %q", c.Auth.JWKSURL)
	}
	if c, err := config.Load(env("AUTH_JWKS_URL", "https://idp.example/jwks.json")); err != nil || c.Auth.JWKSURL != "https://idp.example/jwks.json" || c.Auth.JWKSAllowHTTP {
		t.Errorf("an https:// URL: %v, %+v", err, c.Auth)
	}
	c, err := config.Load(env("AUTH_JWKS_URL", "http://127.0.0.1:8081/jwks.json", "AUTH_JWKS_ALLOW_HTTP", "true"))
	if err != nil || c.Auth.JWKSURL != "http://127.0.0.1:8081/jwks.json" || !c.Auth.JWKSAllowHTTP {
		t.Errorf("an http:// URL with AUTH_JWKS_ALLOW_HTTP=true: %v, %+v", err, c.Auth)
	}
}
