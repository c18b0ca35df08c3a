// Package config reads the service's configuration from environment
// variables. Every key, with its default, is listed in .env.example; the
// defaults work against a local Postgres and Redis.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
)

// Config is the whole configuration of the service, parsed once at start.
type Config struct {
	HTTP     HTTP
	Postgres Postgres
	Redis    Redis
	Worker   Worker
	Reports  Reports
	Users    Users
	Cache    Cache
	Events   Events
	Auth     Auth
	// IdempotencyTTL is how long a request's Idempotency-Key and stored
	// response are kept.
	IdempotencyTTL time.Duration
	// AuditRetention is how long audit entries are kept; 0 keeps them
	// forever.
	AuditRetention time.Duration
	Admin          Admin
	Log            Log
	// ShutdownTimeout bounds a graceful shutdown.
	ShutdownTimeout time.Duration
}

// HTTP configures the API server.
type HTTP struct {
	Addr              string
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	// RequestTimeout bounds the work of one request (its context deadline).
	RequestTimeout time.Duration
	// MaxConns bounds open client connections; more wait to be accepted.
	MaxConns int
}

// Postgres configures the database pool.
type Postgres struct {
	URL string
	// DirectURL is for what needs a session of its own (LISTEN, session
	// advisory locks): the server itself when URL is a pooler in
	// transaction mode. Default: URL.
	DirectURL        string
	MaxConns         int32
	StatementTimeout time.Duration
	// ReplicaURL, if set, is a streaming standby of the primary: the reads
	// that may be a little late go there when it is exact to (see
	// postgres.Standby), unless it is more than ReplicaMaxLag behind.
	ReplicaURL    string
	ReplicaMaxLag time.Duration
	// ExecMode is how pgx sends statements on URL (see postgres.ExecModes):
	// through PgBouncer in transaction mode before 1.21, one that prepares
	// no named statements.
	ExecMode string
}

// Redis configures the task queue's Redis.
type Redis struct {
	// URL names the server, its database and credentials; with Sentinel
	// only its database and credentials count.
	URL string
	// SentinelAddrs, if set, are the Redis Sentinels (host:port) that name
	// the master called SentinelMaster: every client follows it through a
	// failover.
	SentinelAddrs  []string
	SentinelMaster string
	// SentinelPassword authenticates to the sentinels (not the master).
	SentinelPassword string
}

// Worker configures the background task server.
type Worker struct {
	Concurrency int
	Queue       string
	// SweepInterval is how often expired memberships that no task removed
	// are swept.
	SweepInterval time.Duration
	// SweepBatch is how many memberships one sweep transaction removes.
	SweepBatch int
	// RolloutBatch is how many registered users one rollout transaction
	// considers.
	RolloutBatch int
	// RolloutWorkers is how many rollout transactions run at once.
	RolloutWorkers int
	// RolloutRate bounds the registered users per second this process's
	// rollouts go through; 0 sets no bound.
	RolloutRate int
	// RolloutMaxRetry is how often a failing rollout task is retried
	// (backing off from 1 s to 1 min) before its rollout is marked failed;
	// the periodic resume takes failed rollouts up again.
	RolloutMaxRetry int
	// ImportBatch is how many listed users one import transaction applies.
	ImportBatch int
	// ImportRate bounds the listed users per second this process's
	// imports apply; 0 sets no bound.
	ImportRate int
	// ImportUploadTimeout bounds an import's upload: receiving, checking
	// and storing its list.
	ImportUploadTimeout time.Duration
}

// Reports configures history report links.
type Reports struct {
	// Secret signs report links; every replica must share it. Empty means
	// a random secret per process (links then die with it).
	Secret string
	// LinkTTL is how long a report link works.
	LinkTTL time.Duration
	// PublicURL is the scheme and host links start with; empty makes
	// links relative (never built from a request's Host header).
	PublicURL string
	// Timeout bounds one report download.
	Timeout time.Duration
	// Concurrency is how many CSV exports one process runs at once; more
	// are refused (429) rather than queued.
	Concurrency int
}

// Users configures the user registry.
type Users struct {
	// ReadsRegister says which reads of an unknown user's segments
	// register it: write-scope (by callers that may write; every caller
	// with authentication off), always, or never.
	ReadsRegister string
}

// Cache configures the API's in-memory cache of users' segments.
type Cache struct {
	// MaxBytes bounds the memory its entries take; 0 turns it off.
	MaxBytes int64
	// RelayInterval is how often the API relays the changes that the
	// database queued to every replica's cache: the bulk of the delay
	// before a change through one replica shows on another.
	RelayInterval time.Duration
}

// Events configures the change events the worker publishes to a Redis
// Stream (README, "Change events").
type Events struct {
	// Enabled turns publishing on (the default); off, events wait in the
	// database and are published once it is on again.
	Enabled bool
	// Stream is the stream's key.
	Stream string
	// MaxLen is about how many entries the stream keeps.
	MaxLen int64
	// Batch is how many events one XADD pipeline carries.
	Batch int
	// Interval is how often the relay looks for new events once it has
	// published all it may.
	Interval time.Duration
	// WaitReplicas is how many Redis replicas must hold a batch before
	// it counts as published (WAIT): with Sentinel, a failover then loses
	// no event the relay has marked published.
	WaitReplicas int
}

// Auth configures bearer-token authentication; off unless JWTSecret or
// JWKSURL is set.
type Auth struct {
	// JWTSecret verifies HS256 tokens (its bytes as given, at least 32).
	JWTSecret string
	// JWKSURL is the JWK Set for RS256, ES256 and EdDSA tokens: https,
	// or http if JWKSAllowHTTP.
	JWKSURL string
	// JWKSAllowHTTP lets JWKSURL be http:// (development only).
	JWKSAllowHTTP bool
	// Issuer and Audience, if set, must match the token's iss and aud.
	Issuer, Audience string
	// Leeway is the clock skew allowed on exp, nbf and iat.
	Leeway time.Duration
	// JWKSRefresh is how often the JWK Set is fetched again (10 s to 24 h).
	JWKSRefresh time.Duration
	// JWKSUnknownKIDRefresh is the least time between extra fetches for
	// tokens that name a key the set lacks (1 s to 1 h: anyone can send
	// such tokens).
	JWKSUnknownKIDRefresh time.Duration
}

// Enabled says whether authentication is on.
func (a Auth) Enabled() bool { return a.JWTSecret != "" || a.JWKSURL != "" }

// Admin configures operator tools.
type Admin struct {
	// QueuesUI serves the asynq web UI (asynqmon) under /admin/queues. It
	// can delete and retry tasks: expose it to operators only.
	QueuesUI bool
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error.
	Level string
	// Format is json or console.
	Format string
	// Requests says which requests get an access log line: errors (those
	// answered 400 or more), all, or none. Metrics count every request
	// either way.
	Requests string
}

// Load reads the configuration through getenv (os.Getenv in production). It
// reports every bad value at once.
func Load(getenv func(string) string) (Config, error) {
	p := parser{getenv: getenv}
	c := Config{
		HTTP: HTTP{
			Addr:              p.str("HTTP_ADDR", "127.0.0.1:8080"),
			ReadHeaderTimeout: p.duration("HTTP_READ_HEADER_TIMEOUT", 5*time.Second),
			ReadTimeout:       p.duration("HTTP_READ_TIMEOUT", 30*time.Second),
			WriteTimeout:      p.duration("HTTP_WRITE_TIMEOUT", 5*time.Minute),
			IdleTimeout:       p.duration("HTTP_IDLE_TIMEOUT", 2*time.Minute),
			RequestTimeout:    p.duration("HTTP_REQUEST_TIMEOUT", 30*time.Second),
			MaxConns:          p.intRange("HTTP_MAX_CONNS", 2048, 1, 1000000),
		},
		Postgres: Postgres{
			URL:              p.str("DATABASE_URL", "postgres://segments:segments@127.0.0.1:5432/segments?sslmode=disable"),
			MaxConns:         int32(p.intRange("DATABASE_MAX_CONNS", 32, 1, 10000)),
			StatementTimeout: p.duration("DATABASE_STATEMENT_TIMEOUT", 30*time.Second),
			DirectURL:        p.str("DATABASE_DIRECT_URL", p.str("DATABASE_URL", "postgres://segments:segments@127.0.0.1:5432/segments?sslmode=disable")),
			ReplicaURL:       p.str("DATABASE_REPLICA_URL", ""),
			ReplicaMaxLag:    p.durationRange("REPLICA_MAX_LAG", time.Second, 10*time.Millisecond, time.Hour),
			ExecMode:         p.oneOf("DATABASE_EXEC_MODE", "cache_statement", "cache_statement", "cache_describe", "describe_exec", "exec", "simple_protocol"),
		},
		Redis: Redis{
			URL:              p.str("REDIS_URL", "redis://127.0.0.1:6379/0"),
			SentinelAddrs:    p.list("REDIS_SENTINEL_ADDRS"),
			SentinelMaster:   p.str("REDIS_SENTINEL_MASTER", ""),
			SentinelPassword: p.str("REDIS_SENTINEL_PASSWORD", ""),
		},
		Worker: Worker{
			Concurrency:     p.intRange("WORKER_CONCURRENCY", 10, 1, 1000),
			Queue:           p.str("WORKER_QUEUE", "segments"),
			SweepInterval:   p.duration("SWEEP_INTERVAL", 30*time.Second),
			SweepBatch:      p.intRange("SWEEP_BATCH", 1000, 1, 1000000),
			RolloutBatch:    p.intRange("ROLLOUT_BATCH", 20000, 1, 10000000),
			RolloutWorkers:  p.intRange("ROLLOUT_WORKERS", 2, 1, 64),
			RolloutRate:     p.intRange("ROLLOUT_RATE", 0, 0, 1000000000),
			RolloutMaxRetry: p.intRange("ROLLOUT_MAX_RETRY", 8, 0, 100),

			ImportBatch:         p.intRange("IMPORT_BATCH", 10000, 1, 10000),
			ImportRate:          p.intRange("IMPORT_RATE", 0, 0, 1000000000),
			ImportUploadTimeout: p.durationRange("IMPORT_UPLOAD_TIMEOUT", 10*time.Minute, time.Second, 24*time.Hour),
		},
		Reports: Reports{
			Secret:      p.secret("REPORT_SECRET", 32),
			LinkTTL:     p.duration("REPORT_LINK_TTL", 24*time.Hour),
			PublicURL:   p.url("PUBLIC_BASE_URL"),
			Timeout:     p.duration("REPORT_TIMEOUT", 10*time.Minute),
			Concurrency: p.intRange("REPORT_CONCURRENCY", 4, 1, 1000),
		},
		Users: Users{
			ReadsRegister: p.oneOf("READS_REGISTER_USERS", "write-scope", "write-scope", "always", "never"),
		},
		Cache: Cache{
			MaxBytes:      p.bytes("CACHE_MAX_BYTES", 256<<20, 1<<20, 1<<40),
			RelayInterval: p.durationRange("CACHE_RELAY_INTERVAL", 25*time.Millisecond, time.Millisecond, 10*time.Second),
		},
		Events: Events{
			Enabled:  p.boolean("EVENTS_ENABLED", true),
			Stream:   p.str("EVENTS_STREAM", "segments:changes"),
			MaxLen:   int64(p.intRange("EVENTS_STREAM_MAXLEN", 1000000, 1, 1000000000)),
			Batch:    p.intRange("EVENTS_BATCH", 5000, 1, 100000),
			Interval: p.durationRange("EVENTS_INTERVAL", 100*time.Millisecond, time.Millisecond, 10*time.Second),
			// With Sentinel a replica must hold what is marked published.
			WaitReplicas: p.intRange("EVENTS_WAIT_REPLICAS", boolInt(p.getenv("REDIS_SENTINEL_ADDRS") != ""), 0, 10),
		},
		Auth: Auth{
			JWTSecret:             p.secret("AUTH_JWT_SECRET", 32),
			JWKSURL:               p.url("AUTH_JWKS_URL"),
			JWKSAllowHTTP:         p.boolean("AUTH_JWKS_ALLOW_HTTP", false),
			Issuer:                p.str("AUTH_JWT_ISSUER", ""),
			Audience:              p.str("AUTH_JWT_AUDIENCE", ""),
			Leeway:                p.durationRange("AUTH_JWT_LEEWAY", 30*time.Second, 0, 5*time.Minute),
			JWKSRefresh:           p.durationRange("AUTH_JWKS_REFRESH_INTERVAL", 5*time.Minute, 10*time.Second, 24*time.Hour),
			JWKSUnknownKIDRefresh: p.durationRange("AUTH_JWKS_UNKNOWN_KID_INTERVAL", 10*time.Second, time.Second, time.Hour),
		},
		IdempotencyTTL: p.durationRange("IDEMPOTENCY_TTL", 24*time.Hour, time.Second, 30*24*time.Hour),
		AuditRetention: p.retention("AUDIT_RETENTION"),
		Admin: Admin{
			QueuesUI: p.boolean("ADMIN_QUEUES_UI", false),
		},
		Log: Log{
			Level:    p.oneOf("LOG_LEVEL", "info", "debug", "info", "warn", "error"),
			Format:   p.oneOf("LOG_FORMAT", "json", "json", "console"),
			Requests: p.oneOf("LOG_REQUESTS", "errors", "errors", "all", "none"),
		},
		ShutdownTimeout: p.duration("SHUTDOWN_TIMEOUT", 20*time.Second),
	}
	// A batch waits at most a minute for its turn: a rollout runs inside a
	// task with a deadline, and a wait longer than what is left fails it.
	if w := c.Worker; w.RolloutRate > 0 && w.RolloutBatch > 60*w.RolloutRate {
		p.errs = append(p.errs, fmt.Errorf("ROLLOUT_RATE=%d: want 0 (no bound) or at least ROLLOUT_BATCH/60 (%d), a batch a minute",
			w.RolloutRate, (w.RolloutBatch+59)/60))
	}
	// The keys that authenticate every caller must not be open to change
	// on the way.
	if a := c.Auth; strings.HasPrefix(strings.ToLower(a.JWKSURL), "http://") && !a.JWKSAllowHTTP {
		p.errs = append(p.errs, fmt.Errorf("AUTH_JWKS_URL=%q: want an https URL (whoever can change the JWK Set on the way can sign any token); AUTH_JWKS_ALLOW_HTTP=true allows http, for development only",
			a.JWKSURL))
	}
	if r := c.Redis; (len(r.SentinelAddrs) == 0) != (r.SentinelMaster == "") {
		p.errs = append(p.errs, fmt.Errorf("REDIS_SENTINEL_ADDRS and REDIS_SENTINEL_MASTER go together: set both (Sentinel) or neither (REDIS_URL's server)"))
	}
	for key, instead := range Retired {
		if p.getenv(key) != "" {
			p.errs = append(p.errs, fmt.Errorf("%s is no longer read: %s", key, instead))
		}
	}
	return c, errors.Join(p.errs...)
}

// Redacted returns the configuration as it may be logged: each
// connection string is parsed with its driver's own parser (every form it
// accepts: URLs, libpq keywords, a password in the user info, the query or
// a keyword) and shown as the user, host, port and database it names,
// never the password.
func (c Config) Redacted() Config {
	c.Postgres.URL = describeDatabase(c.Postgres.URL)
	c.Postgres.DirectURL = describeDatabase(c.Postgres.DirectURL)
	if c.Postgres.ReplicaURL != "" {
		c.Postgres.ReplicaURL = describeDatabase(c.Postgres.ReplicaURL)
	}
	c.Redis.URL = describeRedis(c.Redis.URL)
	if c.Reports.Secret != "" {
		c.Reports.Secret = "(set)"
	}
	if c.Auth.JWTSecret != "" {
		c.Auth.JWTSecret = "(set)"
	}
	return c
}

func describeDatabase(raw string) string {
	cfg, err := pgconn.ParseConfig(raw)
	if err != nil {
		return "(unparsable)"
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

func describeRedis(raw string) string {
	opt, err := redis.ParseURL(raw)
	if err != nil {
		return "(unparsable)"
	}
	scheme, user := "redis", ""
	if opt.TLSConfig != nil {
		scheme = "rediss"
	}
	if opt.Username != "" {
		user = opt.Username + "@"
	}
	return fmt.Sprintf("%s://%s%s/%d", scheme, user, opt.Addr, opt.DB)
}

type parser struct {
	getenv func(string) string
	errs   []error
}

func (p *parser) str(key, def string) string {
	if v := p.getenv(key); v != "" {
		return v
	}
	return def
}

func (p *parser) boolean(key string, def bool) bool {
	v := p.getenv(key)
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		p.errs = append(p.errs, fmt.Errorf("%s=%q: want true or false", key, v))
		return def
	}
	return b
}

// secret reads a secret of at least minLen bytes; empty is allowed.
func (p *parser) secret(key string, minLen int) string {
	v := p.getenv(key)
	if v != "" && len(v) < minLen {
		p.errs = append(p.errs, fmt.Errorf("%s: want at least %d characters (e.g. openssl rand -hex 32)", key, minLen))
	}
	return v
}

// url reads an absolute http(s) URL; empty is allowed.
func (p *parser) url(key string) string {
	v := p.getenv(key)
	if v == "" {
		return ""
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		p.errs = append(p.errs, fmt.Errorf("%s=%q: want an absolute http(s) URL such as https://segments.example.com", key, v))
		return ""
	}
	return strings.TrimSuffix(v, "/")
}

func (p *parser) duration(key string, def time.Duration) time.Duration {
	v := p.getenv(key)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		p.errs = append(p.errs, fmt.Errorf("%s=%q: want a non-negative duration such as 30s or 5m", key, v))
		return def
	}
	return d
}

// list reads a comma-separated list of host:port addresses; empty if
// unset.
func (p *parser) list(key string) []string {
	var out []string
	for _, a := range strings.Split(p.getenv(key), ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			p.errs = append(p.errs, fmt.Errorf("%s: %q is not host:port", key, a))
			continue
		}
		out = append(out, a)
	}
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// retention reads how long something is kept: 0 (the default) for ever,
// else at least an hour.
func (p *parser) retention(key string) time.Duration {
	d := p.duration(key, 0)
	if d != 0 && d < time.Hour {
		p.errs = append(p.errs, fmt.Errorf("%s=%q: want 0 (keep for ever) or at least 1h, such as 2160h for 90 days", key, p.getenv(key)))
		return 0
	}
	return d
}

func (p *parser) durationRange(key string, def, lo, hi time.Duration) time.Duration {
	d := p.duration(key, def)
	if d < lo || d > hi {
		p.errs = append(p.errs, fmt.Errorf("%s=%q: want a duration from %s to %s", key, p.getenv(key), lo, hi))
		return def
	}
	return d
}

// byteUnits are the suffixes bytes accepts, largest first.
var byteUnits = []struct {
	suffix string
	n      int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}

// bytes reads a size in bytes: a whole number, optionally with a suffix
// B, KiB, MiB or GiB; 0, or one from lo to hi.
func (p *parser) bytes(key string, def, lo, hi int64) int64 {
	v := p.getenv(key)
	if v == "" {
		return def
	}
	for _, u := range byteUnits {
		digits, ok := strings.CutSuffix(v, u.suffix)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(digits), 10, 64)
		if err == nil && n >= 0 && n <= hi/u.n && (n == 0 || n*u.n >= lo) {
			return n * u.n
		}
		break
	}
	p.errs = append(p.errs, fmt.Errorf("%s=%q: want 0 or a size from %d to %d bytes (a whole number, optionally with B, KiB, MiB or GiB)", key, v, lo, hi))
	return def
}

// Retired are the keys the service no longer reads, with what to set
// instead. Load refuses them, so that a setting that once meant something
// (CACHE_SIZE=0 turned the cache off) is not silently ignored.
var Retired = map[string]string{
	"CACHE_SIZE": "the read cache is bounded in bytes now: set CACHE_MAX_BYTES (0 turns it off)",
}

func (p *parser) intRange(key string, def, lo, hi int) int {
	v := p.getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		p.errs = append(p.errs, fmt.Errorf("%s=%q: want a whole number from %d to %d", key, v, lo, hi))
		return def
	}
	return n
}

func (p *parser) oneOf(key, def string, allowed ...string) string {
	v := p.getenv(key)
	if v == "" {
		return def
	}
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	p.errs = append(p.errs, fmt.Errorf("%s=%q: want one of %q", key, v, allowed))
	return def
}
