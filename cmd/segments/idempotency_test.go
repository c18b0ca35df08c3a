package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segments-service/segments/tools/testenv"
)

// cutProxy stands between the API and PostgreSQL and, once armed, cuts
// the connection that runs a chosen statement: after passing its
// execution on (the server runs it; the client never hears back) or
// instead of passing it on (the server sees the connection drop
// mid-transaction). It reads the frontend protocol's messages just enough
// to know which statement an Execute runs.
type cutProxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	prefix  string // lower-case statement prefix to cut at; "" when disarmed
	forward bool
	fired   chan string
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

// arm makes the proxy cut the next connection that sends a statement
// starting with prefix; it returns a channel that receives the statement.
func (p *cutProxy) arm(prefix string, forward bool) <-chan string {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.prefix, p.forward, p.fired = strings.ToLower(prefix), forward, make(chan string, 1)
	return p.fired
}

func (p *cutProxy) serve(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer server.Close()
	// Once the armed statement is passed on, nothing the server sends
	// reaches the client: it must not learn the outcome.
	var frozen atomic.Bool
	go func() {
		defer client.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := server.Read(buf)
			if n > 0 && !frozen.Load() {
				if _, werr := client.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()

	// The startup message has no type byte: a length, then the rest.
	var n [4]byte
	if _, err := io.ReadFull(client, n[:]); err != nil {
		return
	}
	startup := make([]byte, binary.BigEndian.Uint32(n[:])-4)
	if _, err := io.ReadFull(client, startup); err != nil {
		return
	}
	if _, err := server.Write(append(n[:], startup...)); err != nil {
		return
	}
	names := map[string]string{}
	for {
		var head [5]byte
		if _, err := io.ReadFull(client, head[:]); err != nil {
			return
		}
		body := make([]byte, binary.BigEndian.Uint32(head[1:])-4)
		if _, err := io.ReadFull(client, body); err != nil {
			return
		}
		msg := append(head[:], body...)
		if stmt, forward, ok := p.statement(head[0], body, names); ok {
			frozen.Store(true)
			if forward {
				_, _ = server.Write(msg)
				time.Sleep(200 * time.Millisecond) // let the server run it before it sees the cut
			}
			p.fired <- stmt
			return
		}
		if _, err := server.Write(msg); err != nil {
			return
		}
	}
}

// statement reports whether a message runs the armed statement (a simple
// query, or the Execute of a portal bound to a parsed statement that is),
// disarming the proxy if so. names maps the connection's prepared
// statements and portals to their SQL.
func (p *cutProxy) statement(typ byte, body []byte, names map[string]string) (stmt string, forward, ok bool) {
	fields := bytes.Split(body, []byte{0})
	switch typ {
	case 'P': // statement name, query, ...
		names["s:"+string(fields[0])] = string(fields[1])
		return "", false, false
	case 'B': // portal name, statement name, ...
		names["p:"+string(fields[0])] = names["s:"+string(fields[1])]
		return "", false, false
	case 'E': // portal name, row limit
		stmt = names["p:"+string(fields[0])]
	case 'Q':
		stmt = string(fields[0])
	default:
		return "", false, false
	}
	stmt = strings.ToLower(strings.TrimSpace(stmt))
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.prefix == "" || !strings.HasPrefix(stmt, p.prefix) {
		return "", false, false
	}
	p.prefix = ""
	return stmt, p.forward, true
}

// keyedPost sends a POST with an Idempotency-Key and returns the status,
// the body and whether it was a replay.
func keyedPost(t *testing.T, url, key, body string) (int, string, bool) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("Idempotent-Replayed") == "true"
}

// TestRetryAfterACutCommitAppliesOnce cuts the API's connection to
// PostgreSQL while it commits a keyed change, in the two places that
// matter: once the server has the COMMIT (the change is applied, the
// client gets a 503), and before the response is stored (nothing is
// applied). Either way the client's retry with the same key ends with the
// change applied exactly once and the first outcome in hand; after the API
// restarts, the key still replays from the database.
func TestRetryAfterACutCommitAppliesOnce(t *testing.T) {
	vars, pool := cacheVars(t)
	u, err := url.Parse(vars["DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	proxy := newCutProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	vars["DATABASE_URL"] = u.String()
	api := startReplica(t, "api", vars)
	api.send(t, "POST", "/api/v1/segments", `{"slug":"CUT_A"}`)
	api.send(t, "POST", "/api/v1/segments", `{"slug":"CUT_B"}`)
	events := func(user int64) int64 {
		return count(t, pool, fmt.Sprintf(`SELECT count(*) FROM membership_history WHERE user_id = %d`, user))
	}

	for _, tc := range []struct {
		name    string
		user    int64
		prefix  string
		forward bool
		applied bool // whether the first attempt's change is in the database after the cut
	}{
		{"cut once the server has the commit", 1000, "commit", true, true},
		{"cut before the response is stored", 1001, "insert into idempotency_keys", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := fmt.Sprintf("%s/api/v1/users/%d/segments", api.base, tc.user)
			body := `{"add":["CUT_A","CUT_B"]}`
			fired := proxy.arm(tc.prefix, tc.forward)
			// A pooled connection that an earlier cut killed fails the
			// request before it runs (503); the client retries with its key
			// until the cut happens.
			for attempt := 1; ; attempt++ {
				status, answer, _ := keyedPost(t, path, "cut-"+tc.name, body)
				if status != http.StatusServiceUnavailable {
					t.Fatalf("attempt %d got %d %s, want 503", attempt, status, answer)
				}
				select {
				case stmt := <-fired:
					t.Logf("attempt %d: cut at %q; the client got %d %s", attempt, stmt, status, answer)
				default:
					if attempt == 5 {
						t.Fatal("the proxy never saw the statement")
					}
					continue
				}
				break
			}
			want := int64(0)
			if tc.applied {
				want = 2
			}
			if n := events(tc.user); n != want {
				t.Fatalf("after the cut: %d history events, want %d", n, want)
			}
			status, answer, replayed := keyedPost(t, path, "cut-"+tc.name, body)
			if status != http.StatusOK || replayed != tc.applied || !strings.Contains(answer, `"added":["CUT_A","CUT_B"]`) {
				t.Fatalf("retry: %d %s (replayed %v), want 200 with both added (replayed %v)", status, answer, replayed, tc.applied)
			}
			if n := events(tc.user); n != 2 {
				t.Fatalf("after the retry: %d history events, want 2 (one add per segment)", n)
			}
		})
	}

	// A restarted API replays from the database.
	_ = api.cmd.Process.Kill()
	_, _ = api.cmd.Process.Wait()
	again := startReplica(t, "api-restarted", vars)
	status, answer, replayed := keyedPost(t, again.base+"/api/v1/users/1000/segments", "cut-cut once the server has the commit", `{"add":["CUT_A","CUT_B"]}`)
	if status != http.StatusOK || !replayed || !strings.Contains(answer, `"added":["CUT_A","CUT_B"]`) {
		t.Fatalf("after a restart: %d %s (replayed %v)", status, answer, replayed)
	}
	if n := events(1000); n != 2 {
		t.Fatalf("after the restart's retry: %d history events, want 2", n)
	}
}

// The worker deletes Idempotency-Keys once they are older than
// IDEMPOTENCY_TTL, on its periodic sweep, in batches.
func TestWorkerSweepsIdempotencyKeys(t *testing.T) {
	vars, pool := cacheVars(t)
	const insert = `
		INSERT INTO idempotency_keys (caller, key, fingerprint, method, path, status, headers, body, created_at)
		SELECT '', 'k' || i, sha256(i::text::bytea), 'POST', '/api/v1/users', 200, '{}', '{}', now() - $1::interval
		FROM generate_series($2::int, $3::int) AS i`
	if _, err := pool.Exec(t.Context(), insert, "1 hour", 1, 2500); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(t.Context(), insert, "0 seconds", 2501, 2510); err != nil {
		t.Fatal(err)
	}
	startWorker(t, mapWith(vars, "SWEEP_INTERVAL", "1s", "SWEEP_BATCH", "1000", "IDEMPOTENCY_TTL", "30s"))
	testenv.Eventually(t, 15*time.Second, "the keys past their TTL were not swept", func() bool {
		return count(t, pool, `SELECT count(*) FROM idempotency_keys`) == 10
	})
	if n := count(t, pool, `SELECT count(*) FROM idempotency_keys WHERE key IN ('k2501', 'k2510')`); n != 2 {
		t.Fatalf("the sweep took keys inside their TTL: %d of the 10 fresh ones left", n)
	}
}

// TestAuditEntryOnlyForACommittedChange cuts the API's connection to
// PostgreSQL while it commits a keyed creation of a segment: cut before
// the server has the COMMIT, the creation and its audit entry are both
// gone, and the retry makes them once; cut after, both are there, and the
// retry replays without a second entry.
func TestAuditEntryOnlyForACommittedChange(t *testing.T) {
	vars, pool := cacheVars(t)
	u, err := url.Parse(vars["DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	proxy := newCutProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	vars["DATABASE_URL"] = u.String()
	api := startReplica(t, "api", vars)
	api.send(t, "GET", "/api/v1/segments", "") // a pooled connection, before any cut

	for _, tc := range []struct {
		slug      string
		forward   bool // whether the server gets the COMMIT
		committed bool
	}{
		{"CUT_BEFORE", false, false},
		{"CUT_AFTER", true, true},
	} {
		t.Run(tc.slug, func(t *testing.T) {
			body := fmt.Sprintf(`{"slug":%q}`, tc.slug)
			entries := func() int64 {
				return count(t, pool, fmt.Sprintf(`SELECT count(*) FROM audit_log WHERE target_slug = '%s'`, tc.slug))
			}
			fired := proxy.arm("commit", tc.forward)
			for attempt := 1; ; attempt++ {
				status, answer, _ := keyedPost(t, api.base+"/api/v1/segments", "audit-"+tc.slug, body)
				if status != http.StatusServiceUnavailable {
					t.Fatalf("attempt %d got %d %s, want 503", attempt, status, answer)
				}
				select {
				case <-fired:
				default:
					if attempt == 5 {
						t.Fatal("the proxy never saw the commit")
					}
					continue
				}
				break
			}
			want := int64(0)
			if tc.committed {
				want = 1
			}
			if n, s := entries(), count(t, pool, fmt.Sprintf(`SELECT count(*) FROM segments WHERE slug = '%s'`, tc.slug)); n != want || s != want {
				t.Fatalf("after the cut: %d audit entries and %d segments, want %d of each", n, s, want)
			}
			status, answer, replayed := keyedPost(t, api.base+"/api/v1/segments", "audit-"+tc.slug, body)
			if status != http.StatusCreated || replayed != tc.committed {
				t.Fatalf("retry: %d %s (replayed %v), want 201 (replayed %v)", status, answer, replayed, tc.committed)
			}
			if n := entries(); n != 1 {
				t.Fatalf("after the retry: %d audit entries, want 1", n)
			}
		})
	}
}

// The worker deletes audit entries older than AUDIT_RETENTION, on its
// periodic sweep, in batches, and keeps the rest.
func TestWorkerSweepsTheAuditLog(t *testing.T) {
	vars, pool := cacheVars(t)
	const insert = `
		INSERT INTO audit_log (at, actor, action, target_kind, target_slug, changes)
		SELECT now() - $1::interval, 'test', 'create', 'segment', 'S' || i, '{}'
		FROM generate_series($2::int, $3::int) AS i`
	if _, err := pool.Exec(t.Context(), insert, "3 hours", 1, 2500); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(t.Context(), insert, "30 minutes", 2501, 2510); err != nil {
		t.Fatal(err)
	}
	startWorker(t, mapWith(vars, "SWEEP_INTERVAL", "1s", "SWEEP_BATCH", "1000", "AUDIT_RETENTION", "2h"))
	testenv.Eventually(t, 15*time.Second, "the entries past AUDIT_RETENTION were not swept", func() bool {
		return count(t, pool, `SELECT count(*) FROM audit_log`) == 10
	})
	if n := count(t, pool, `SELECT count(*) FROM audit_log WHERE target_slug IN ('S2501', 'S2510')`); n != 2 {
		t.Fatalf("the sweep took entries inside the retention: %d of the 10 recent ones left", n)
	}
}
