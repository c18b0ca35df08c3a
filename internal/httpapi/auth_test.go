package httpapi_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/go-chi/chi/v5"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/httpapi"
)

// refusals counts refused tokens by reason.
type refusals map[auth.Reason]int

func (r refusals) AuthRefused(reason auth.Reason) { r[reason]++ }

// TestEveryRouteChecksItsScope sends every route of the router (walked,
// so that a route registered outside the scope table is caught) a request
// with each kind of token. A route must have a scope decision; each token
// must get the status the table implies: 401 for a bad token, 403 for a
// good one without the route's scope, the handler's own answer otherwise.
func TestEveryRouteChecksItsScope(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	jwk, err := jwkset.NewJWKFromKey(&key.PublicKey, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: "k1", ALG: jwkset.AlgRS256}})
	if err != nil {
		t.Fatal(err)
	}
	keys := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{jwk.Marshal()}})
	}))
	defer keys.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v, err := auth.New(ctx, auth.Config{
		Secret: []byte(testSecret), JWKSURL: keys.URL, Audience: "segments", Leeway: 5 * time.Second,
		JWKSRefresh: time.Hour, JWKSUnknownKIDRefresh: time.Hour, JWKSAllowHTTP: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	counted := refusals{}
	a := newAPI(t, func(o *httpapi.Options) { o.Auth, o.AuthObserver = v, counted })

	now := time.Now()
	token := func(method jwt.SigningMethod, signingKey any, edit func(jwt.MapClaims)) string {
		c := jwt.MapClaims{"sub": "tester", "aud": "segments", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		if edit != nil {
			edit(c)
		}
		tok := jwt.NewWithClaims(method, c)
		tok.Header["kid"] = "k1"
		s, err := tok.SignedString(signingKey)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	scoped := func(scope string) func(jwt.MapClaims) { return func(c jwt.MapClaims) { c["scope"] = scope } }
	none := func() string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"scope": "segments:admin segments:read segments:write", "exp": now.Add(time.Hour).Unix()}).
			SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	all := auth.ScopeRead + " " + auth.ScopeWrite + " " + auth.ScopeAdmin
	bad := []struct {
		name, header string
		reason       auth.Reason
	}{
		{"no token", "", auth.ReasonMissing},
		{"not bearer", "Basic dGVzdGVyOnNlY3JldA==", auth.ReasonMissing},
		{"expired", "Bearer " + token(jwt.SigningMethodHS256, []byte(testSecret), func(c jwt.MapClaims) {
			c["scope"], c["exp"] = all, now.Add(-time.Minute).Unix()
		}), auth.ReasonExpired},
		{"wrong signature", "Bearer " + token(jwt.SigningMethodHS256, []byte(strings.Repeat("x", 40)), scoped(all)), auth.ReasonSignature},
		{"wrong algorithm (none)", "Bearer " + none, auth.ReasonAlgorithm},
		{"wrong algorithm (HS512)", "Bearer " + token(jwt.SigningMethodHS512, []byte(testSecret), scoped(all)), auth.ReasonAlgorithm},
		{"wrong audience", "Bearer " + token(jwt.SigningMethodHS256, []byte(testSecret), func(c jwt.MapClaims) {
			c["scope"], c["aud"] = all, "billing"
		}), auth.ReasonAudience},
	}
	scopes := []string{auth.ScopeRead, auth.ScopeWrite, auth.ScopeAdmin}

	table := map[string]string{}
	for _, r := range httpapi.Routes() {
		table[r.Method+" "+r.Pattern] = r.Scope
	}
	walked := 0
	err = chi.Walk(a.h.(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if !strings.HasPrefix(route, "/api/v1/") {
			return nil
		}
		walked++
		scope, ok := table[method+" "+route]
		if !ok {
			t.Errorf("%s %s has no scope decision: add it to apiRoutes", method, route)
			return nil
		}
		if want := contractScope(method, route); scope != want {
			t.Errorf("%s %s needs %q in the scope table; the contract says %q", method, route, scope, want)
		}
		path := strings.NewReplacer("{slug}", "NO_SUCH_SEGMENT", "{user_id}", "1000", "{token}", "not-a-token").Replace(route)
		send := func(header string) response {
			var h []string
			if header != "" {
				h = []string{"Authorization", header}
			}
			return a.do(method, path, map[string]any{}, h...)
		}
		passes := func(name string, r response) {
			if r.status == http.StatusUnauthorized || strings.Contains(string(r.body), "insufficient-scope") {
				t.Errorf("%s %s, %s: %d %s; want the handler's own answer", method, route, name, r.status, r.body)
			}
		}
		for _, b := range bad {
			before := counted[b.reason]
			r := send(b.header)
			if scope == "" {
				passes(b.name, r)
				continue
			}
			p := r.problem(t, http.StatusUnauthorized)
			if p.Type != "urn:segments:problem:invalid-token" || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), `Bearer realm="segments", error="invalid_token"`) {
				t.Errorf("%s %s, %s: %s, WWW-Authenticate %q", method, route, b.name, r.body, r.header.Get("WWW-Authenticate"))
			}
			if counted[b.reason] != before+1 {
				t.Errorf("%s %s, %s: refusal not counted under %s (%v)", method, route, b.name, b.reason, counted)
			}
		}
		for _, s := range scopes {
			for _, signed := range []struct {
				name string
				tok  string
			}{
				{"HS256", token(jwt.SigningMethodHS256, []byte(testSecret), scoped(s))},
				{"RS256", token(jwt.SigningMethodRS256, key, scoped(s))},
			} {
				name := fmt.Sprintf("%s token with %s", signed.name, s)
				r := send("Bearer " + signed.tok)
				if scope == "" || scope == s {
					passes(name, r)
					continue
				}
				p := r.problem(t, http.StatusForbidden)
				if p.Type != "urn:segments:problem:insufficient-scope" || p.RequiredScope != scope ||
					r.header.Get("WWW-Authenticate") != fmt.Sprintf(`Bearer realm="segments", error="insufficient_scope", scope=%q`, scope) {
					t.Errorf("%s %s, %s: %s, WWW-Authenticate %q", method, route, name, r.body, r.header.Get("WWW-Authenticate"))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if walked != len(table) {
		t.Errorf("walked %d routes under /api/v1, the scope table has %d", walked, len(table))
	}
}

// contractScope is the scope design.md's contract gives a route:
// segments:read for every GET and the report-link POSTs, segments:write
// for changing users, segments:admin for changing segments, none for a
// report download (its link is signed).
func contractScope(method, route string) string {
	switch {
	case method == http.MethodGet && strings.HasPrefix(route, "/api/v1/reports/") && strings.HasSuffix(route, "/{token}"):
		return ""
	case method != http.MethodGet && (strings.HasPrefix(route, "/api/v1/segments") ||
		strings.HasPrefix(route, "/api/v1/layers") || strings.HasPrefix(route, "/api/v1/imports")):
		return auth.ScopeAdmin
	case method == http.MethodGet || strings.HasPrefix(route, "/api/v1/reports/"):
		return auth.ScopeRead
	default:
		return auth.ScopeWrite
	}
}

// A refused request changes nothing: a change with a read-only token
// leaves the user unregistered and without history.
func TestRefusedRequestChangesNothing(t *testing.T) {
	v, err := auth.New(context.Background(), auth.Config{Secret: []byte(testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	a := newAPI(t, func(o *httpapi.Options) { o.Auth = v })
	admin, err := auth.Mint([]byte(testSecret), "analyst", []string{auth.ScopeAdmin}, time.Hour, "", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	reader, err := auth.Mint([]byte(testSecret), "reader", []string{auth.ScopeRead}, time.Hour, "", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r := a.do("POST", "/api/v1/segments", map[string]any{"slug": "AUTH_TEST"}, "Authorization", "Bearer "+admin); r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	r := a.do("POST", "/api/v1/users/1000/segments", map[string]any{"add": []string{"AUTH_TEST"}}, "Authorization", "Bearer "+reader)
	r.problem(t, http.StatusForbidden)
	if n := a.scalar(`SELECT count(*) FROM users WHERE id = 1000`) + a.scalar(`SELECT count(*) FROM membership_history WHERE user_id = 1000`); n != 0 {
		t.Fatalf("a refused change left %d rows", n)
	}
}

// Each request's log line names the token's subject, and no line carries
// the token itself.
func TestSubjectIsLoggedNotTheToken(t *testing.T) {
	v, err := auth.New(context.Background(), auth.Config{Secret: []byte(testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	a := newAPI(t, func(o *httpapi.Options) { o.Auth, o.Log, o.LogRequests = v, zap.New(core), "all" })
	token, err := auth.Mint([]byte(testSecret), "checkout", []string{auth.ScopeRead}, time.Hour, "", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a.do("GET", "/api/v1/users/1000/segments", nil, "Authorization", "Bearer "+token)
	a.do("POST", "/api/v1/segments", map[string]any{"slug": "LOGGED"}, "Authorization", "Bearer "+token) // 403
	a.do("GET", "/api/v1/segments", nil, "Authorization", "Bearer "+token+"x")                           // 401

	var subjects []string
	for _, e := range logs.All() {
		fields := e.ContextMap()
		if e.Message == "request" {
			subjects = append(subjects, fmt.Sprint(fields["status"], " ", fields["subject"]))
		}
		line := e.Message + fmt.Sprint(fields)
		if strings.Contains(line, token[len(token)-20:]) {
			t.Errorf("a log line carries the token: %s", line)
		}
	}
	if want := []string{"200 checkout", "403 checkout", "401 "}; !slices.Equal(subjects, want) {
		t.Fatalf("access log subjects %q, want %q", subjects, want)
	}
}
