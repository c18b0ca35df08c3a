package auth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/segments-service/segments/internal/auth"
)

const secret = "a test secret of at least 32 bytes, not a real one"

// keyServer serves a JWK Set that a test can change, and counts fetches.
type keyServer struct {
	mu      sync.Mutex
	keys    []jwkset.JWK
	fetches atomic.Int64
	srv     *httptest.Server
	// answer, if set, answers instead of the set (a fetch all the same).
	answer atomic.Pointer[http.HandlerFunc]
}

func newKeyServer(t *testing.T) *keyServer {
	ks := &keyServer{}
	ks.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ks.fetches.Add(1)
		if h := ks.answer.Load(); h != nil {
			(*h)(w, r)
			return
		}
		ks.serveSet(w)
	}))
	t.Cleanup(ks.srv.Close)
	return ks
}

// serveSet answers with the published set.
func (ks *keyServer) serveSet(w http.ResponseWriter) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	set := jwkset.JWKSMarshal{}
	for _, k := range ks.keys {
		set.Keys = append(set.Keys, k.Marshal())
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(set)
}

// answerWith makes the server answer with h from now on.
func (ks *keyServer) answerWith(h http.HandlerFunc) { ks.answer.Store(&h) }

// publish replaces the served set with the public halves of keys.
func (ks *keyServer) publish(t *testing.T, keys ...signer) {
	t.Helper()
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.keys = nil
	for _, k := range keys {
		jwk, err := jwkset.NewJWKFromKey(k.public, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: k.kid, ALG: k.jwkAlg}})
		if err != nil {
			t.Fatal(err)
		}
		ks.keys = append(ks.keys, jwk)
	}
}

// signer is a private key with its key id and algorithm.
type signer struct {
	kid     string
	method  jwt.SigningMethod
	private any
	public  any
	jwkAlg  jwkset.ALG // the JWK's alg parameter; empty leaves it out
}

func rsaSigner(t *testing.T, kid string) signer {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return signer{kid: kid, method: jwt.SigningMethodRS256, private: k, public: &k.PublicKey, jwkAlg: jwkset.AlgRS256}
}

func ecSigner(t *testing.T, kid string) signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signer{kid: kid, method: jwt.SigningMethodES256, private: k, public: &k.PublicKey}
}

func edSigner(t *testing.T, kid string) signer {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signer{kid: kid, method: jwt.SigningMethodEdDSA, private: priv, public: pub}
}

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// claims are valid claims for the test verifier, changed by edit.
func claims(edit func(jwt.MapClaims)) jwt.MapClaims {
	c := jwt.MapClaims{
		"sub": "checkout", "scope": "segments:read segments:write", "iss": "https://issuer.example", "aud": "segments",
		"iat": now.Add(-time.Minute).Unix(), "exp": now.Add(time.Hour).Unix(),
	}
	if edit != nil {
		edit(c)
	}
	return c
}

func (s signer) sign(t *testing.T, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(s.method, c)
	tok.Header["kid"] = s.kid
	out, err := tok.SignedString(s.private)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func hs256(t *testing.T, key string, c jwt.MapClaims) string {
	t.Helper()
	out, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func newVerifier(t *testing.T, cfg auth.Config) *auth.Verifier {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return now }
	}
	v, err := auth.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestVerify(t *testing.T) {
	ks := newKeyServer(t)
	rs, ec, ed := rsaSigner(t, "rsa-1"), ecSigner(t, "ec-1"), edSigner(t, "ed-1")
	// An RSA key published without its alg: only RS256 may use it.
	rsNoAlg := rsaSigner(t, "rsa-2")
	rsNoAlg.jwkAlg = ""
	ks.publish(t, rs, ec, ed, rsNoAlg)
	v := newVerifier(t, auth.Config{
		Secret: []byte(secret), JWKSURL: ks.srv.URL, JWKSAllowHTTP: true, Issuer: "https://issuer.example", Audience: "segments",
		Leeway: 30 * time.Second, JWKSRefresh: time.Hour, JWKSUnknownKIDRefresh: time.Hour,
	})

	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: must(x509.MarshalPKIXPublicKey(rs.public))})
	noneToken := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodNone, claims(nil))
		out, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}()
	hs384 := func() string {
		out, err := jwt.NewWithClaims(jwt.SigningMethodHS384, claims(nil)).SignedString([]byte(secret))
		if err != nil {
			t.Fatal(err)
		}
		return out
	}()
	// RS256 claimed for the EC key, and a PS256 token for an RSA key.
	ecAsRSA := signer{kid: "ec-1", method: jwt.SigningMethodRS256, private: rs.private}.sign(t, claims(nil))
	ps256 := signer{kid: "rsa-2", method: jwt.SigningMethodPS256, private: rsNoAlg.private}.sign(t, claims(nil))

	tests := []struct {
		name   string
		token  string
		reason auth.Reason // "" means accepted
	}{
		{"HS256", hs256(t, secret, claims(nil)), ""},
		{"RS256", rs.sign(t, claims(nil)), ""},
		{"ES256", ec.sign(t, claims(nil)), ""},
		{"EdDSA", ed.sign(t, claims(nil)), ""},
		{"RS256, key without alg", rsNoAlg.sign(t, claims(nil)), ""},
		{"expired within the leeway", hs256(t, secret, claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-20 * time.Second).Unix() })), ""},
		{"audience among several", hs256(t, secret, claims(func(c jwt.MapClaims) { c["aud"] = []string{"billing", "segments"} })), ""},

		{"empty", "", auth.ReasonMissing},
		{"not a JWT", "abc.def", auth.ReasonMalformed},
		{"expired", hs256(t, secret, claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Minute).Unix() })), auth.ReasonExpired},
		{"no exp", hs256(t, secret, claims(func(c jwt.MapClaims) { delete(c, "exp") })), auth.ReasonNoExpiry},
		{"nbf ahead", hs256(t, secret, claims(func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Minute).Unix() })), auth.ReasonNotYetValid},
		{"iat ahead", hs256(t, secret, claims(func(c jwt.MapClaims) { c["iat"] = now.Add(time.Minute).Unix() })), auth.ReasonNotYetValid},
		{"other issuer", hs256(t, secret, claims(func(c jwt.MapClaims) { c["iss"] = "https://evil.example" })), auth.ReasonIssuer},
		{"other audience", hs256(t, secret, claims(func(c jwt.MapClaims) { c["aud"] = "billing" })), auth.ReasonAudience},
		{"no audience", hs256(t, secret, claims(func(c jwt.MapClaims) { delete(c, "aud") })), auth.ReasonAudience},
		{"wrong secret", hs256(t, "another secret of at least 32 bytes, also fake", claims(nil)), auth.ReasonSignature},
		{"RS256 with another payload", func() string {
			a := strings.Split(rs.sign(t, claims(nil)), ".")
			b := strings.Split(rs.sign(t, claims(func(c jwt.MapClaims) { c["scope"] = "segments:admin" })), ".")
			return a[0] + "." + b[1] + "." + a[2]
		}(), auth.ReasonSignature},
		{"RS256 signed by a key the set lacks, with a known kid", signer{kid: "rsa-1", method: jwt.SigningMethodRS256, private: rsaSigner(t, "x").private}.sign(t, claims(nil)), auth.ReasonSignature},
		{"alg none", noneToken, auth.ReasonAlgorithm},
		{"HS384", hs384, auth.ReasonAlgorithm},
		{"HS256 signed with the RSA public key", hs256(t, string(rsaPEM), claims(nil)), auth.ReasonSignature},
		{"RS256 claimed for an EC key", ecAsRSA, auth.ReasonAlgorithm},
		{"PS256 for an RSA key without alg", ps256, auth.ReasonAlgorithm},
		{"unknown kid", rsaSigner(t, "rsa-9").sign(t, claims(nil)), auth.ReasonUnknownKey},
		{"no kid", func() string {
			out, err := jwt.NewWithClaims(jwt.SigningMethodRS256, claims(nil)).SignedString(rs.private)
			if err != nil {
				t.Fatal(err)
			}
			return out
		}(), auth.ReasonUnknownKey},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := v.Verify(context.Background(), tc.token)
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if c.Subject != "checkout" || !c.Has(auth.ScopeRead) || !c.Has(auth.ScopeWrite) || c.Has(auth.ScopeAdmin) {
					t.Fatalf("caller %+v", c)
				}
				return
			}
			var e *auth.Error
			if !errors.As(err, &e) {
				t.Fatalf("err %v, want an *auth.Error with reason %s", err, tc.reason)
			}
			if e.Reason != tc.reason {
				t.Fatalf("reason %s (%s), want %s", e.Reason, e.Detail, tc.reason)
			}
		})
	}
}

// An HS256 token is refused when only a JWK Set is configured, and a JWK
// Set token when only a secret is.
func TestAlgorithmsFollowTheConfiguredKeys(t *testing.T) {
	ks := newKeyServer(t)
	rs := rsaSigner(t, "rsa-1")
	ks.publish(t, rs)
	onlyJWKS := newVerifier(t, auth.Config{JWKSURL: ks.srv.URL, JWKSAllowHTTP: true, JWKSRefresh: time.Hour, JWKSUnknownKIDRefresh: time.Hour})
	onlySecret := newVerifier(t, auth.Config{Secret: []byte(secret)})
	for _, tc := range []struct {
		v     *auth.Verifier
		token string
	}{
		{onlyJWKS, hs256(t, secret, claims(nil))},
		{onlySecret, rs.sign(t, claims(nil))},
	} {
		_, err := tc.v.Verify(context.Background(), tc.token)
		var e *auth.Error
		if !errors.As(err, &e) || e.Reason != auth.ReasonAlgorithm {
			t.Errorf("err %v, want reason %s", err, auth.ReasonAlgorithm)
		}
	}
}

// TestKeyRotation rotates the JWK Set under a running verifier: a token
// from a new key works at once (its unknown kid makes the verifier fetch
// the set), tokens of the old key keep working while the set still holds
// it and fail once a periodic fetch finds it gone. Made-up key ids cost at
// most one fetch per interval.
func TestKeyRotation(t *testing.T) {
	ks := newKeyServer(t)
	old, next := rsaSigner(t, "2026-10"), rsaSigner(t, "2026-11")
	ks.publish(t, old)
	const refresh = 300 * time.Millisecond
	v := newVerifier(t, auth.Config{JWKSURL: ks.srv.URL, JWKSAllowHTTP: true, JWKSRefresh: refresh, JWKSUnknownKIDRefresh: time.Hour, Now: time.Now})
	valid := func(s signer) error {
		_, err := v.Verify(context.Background(), s.sign(t, claims(func(c jwt.MapClaims) {
			c["iat"], c["exp"] = time.Now().Unix(), time.Now().Add(time.Hour).Unix()
		})))
		return err
	}
	if err := valid(old); err != nil {
		t.Fatalf("old key before rotation: %v", err)
	}

	// Rotation, step 1: the issuer publishes the new key beside the old.
	ks.publish(t, old, next)
	if err := valid(next); err != nil {
		t.Fatalf("new key right after it was published: %v", err)
	}
	if err := valid(old); err != nil {
		t.Fatalf("old key while both are published: %v", err)
	}

	// Step 2: the old key is withdrawn. After the next refresh its tokens
	// fail; the new key's keep working.
	ks.publish(t, next)
	deadline := time.Now().Add(10 * refresh) // a refresh interval, and room for a loaded machine
	for valid(old) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("old key still accepted %v after it was withdrawn", 10*refresh)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := valid(next); err != nil {
		t.Fatalf("new key after rotation: %v", err)
	}

	// Tokens naming unknown keys: the first costs a fetch, the rest are
	// refused without one until the interval has passed.
	var tokens []string
	for i := range 20 {
		tokens = append(tokens, signer{kid: fmt.Sprint("made-up-", i), method: jwt.SigningMethodRS256, private: next.private}.sign(t, claims(func(c jwt.MapClaims) {
			c["iat"], c["exp"] = time.Now().Unix(), time.Now().Add(time.Hour).Unix()
		})))
	}
	before, start := ks.fetches.Load(), time.Now()
	for _, tok := range tokens {
		if _, err := v.Verify(context.Background(), tok); err == nil {
			t.Fatal("a made-up key was accepted")
		}
	}
	// One fetch for the first unknown kid, plus the periodic ones.
	if n, periodic := ks.fetches.Load()-before, int64(time.Since(start)/refresh)+1; n > 1+periodic {
		t.Fatalf("%d fetches for 20 tokens with unknown keys (at most %d periodic)", n, periodic)
	}
}

// fresh makes claims valid now (for verifiers on the real clock).
func fresh(c jwt.MapClaims) { c["iat"], c["exp"] = time.Now().Unix(), time.Now().Add(time.Hour).Unix() }

// wantReason fails t unless err is an *auth.Error with reason want.
func wantReason(t *testing.T, err error, want auth.Reason) {
	t.Helper()
	var e *auth.Error
	if !errors.As(err, &e) || e.Reason != want {
		t.Fatalf("err %v, want reason %s", err, want)
	}
}

// TestJWKSRedirectIsNotFollowed: a JWK Set URL that answers with a
// redirect is refused when the verifier starts and on every later fetch
// (periodic, or for a token naming an unknown key), and the redirect's
// target is never asked.
func TestJWKSRedirectIsNotFollowed(t *testing.T) {
	moved := rsaSigner(t, "moved-1")
	target := newKeyServer(t)
	target.publish(t, moved)
	redirect := func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, target.srv.URL, http.StatusFound) }

	ks := newKeyServer(t)
	ks.answerWith(redirect)
	_, err := auth.New(t.Context(), auth.Config{JWKSURL: ks.srv.URL, JWKSAllowHTTP: true, JWKSRefresh: time.Hour, JWKSUnknownKIDRefresh: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "redirect") {
		t.Fatalf("a JWK Set URL answering 302: %v, want an error that says it redirects", err)
	}

	// A set that starts redirecting once the verifier runs: the keys
	// fetched before stay; the target's key is not taken; the failed
	// fetches are logged.
	old := rsaSigner(t, "old-1")
	later := newKeyServer(t)
	later.publish(t, old)
	const refresh = 100 * time.Millisecond
	core, logs := observer.New(zap.WarnLevel)
	v := newVerifier(t, auth.Config{
		JWKSURL: later.srv.URL, JWKSAllowHTTP: true, JWKSRefresh: refresh, JWKSUnknownKIDRefresh: time.Hour, Now: time.Now, Log: zap.New(core),
	})
	later.answerWith(redirect)
	_, err = v.Verify(t.Context(), moved.sign(t, claims(fresh)))
	wantReason(t, err, auth.ReasonUnknownKey)
	for start := time.Now(); later.fetches.Load() < 4; { // the first, the unknown key's, two periodic
		if time.Since(start) > 50*refresh {
			t.Fatalf("%d fetches in %v", later.fetches.Load(), 50*refresh)
		}
		time.Sleep(refresh / 4)
	}
	if _, err := v.Verify(t.Context(), old.sign(t, claims(fresh))); err != nil {
		t.Errorf("the key fetched before the redirects began: %v", err)
	}
	if n := target.fetches.Load(); n != 0 {
		t.Errorf("the redirect's target was asked %d times", n)
	}
	if n := logs.FilterFieldKey("error").Filter(func(e observer.LoggedEntry) bool {
		return strings.Contains(fmt.Sprint(e.ContextMap()["error"]), "redirect")
	}).Len(); n < 2 {
		t.Errorf("%d failed fetches logged with their cause, want the unknown key's and the periodic ones: %v", n, logs.All())
	}
}

// setJSON is a JWK Set of the public halves of keys, padded with an extra
// member (which readers ignore) to size bytes if size is larger.
func setJSON(t *testing.T, size int, keys ...signer) []byte {
	t.Helper()
	set := struct {
		Keys    []jwkset.JWKMarshal `json:"keys"`
		Padding string              `json:"padding,omitempty"`
	}{}
	for _, k := range keys {
		jwk := must(jwkset.NewJWKFromKey(k.public, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: k.kid, ALG: k.jwkAlg}}))
		set.Keys = append(set.Keys, jwk.Marshal())
	}
	short := must(json.Marshal(set))
	if pad := size - len(short) - len(`,"padding":""`); pad > 0 {
		set.Padding = strings.Repeat("x", pad)
	}
	return must(json.Marshal(set))
}

// TestJWKSOverOneMiBIsRefused: a JWK Set response larger than 1 MiB is
// refused, whether its length is declared or it comes in chunks; one of
// 1 MiB is read.
func TestJWKSOverOneMiBIsRefused(t *testing.T) {
	rs := rsaSigner(t, "rsa-1")
	for _, tc := range []struct {
		name     string
		size     int
		declared bool // Content-Length, else chunked
		ok       bool
	}{
		{"1 MiB, declared", 1 << 20, true, true},
		{"1 MiB, chunked", 1 << 20, false, true},
		{"1 MiB and a byte, chunked", 1<<20 + 1, false, false},
		{"2 MiB, declared", 2 << 20, true, false},
		{"2 MiB, chunked", 2 << 20, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := setJSON(t, tc.size, rs)
			if len(body) != tc.size {
				t.Fatalf("a body of %d bytes, want %d", len(body), tc.size)
			}
			ks := newKeyServer(t)
			ks.answerWith(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				if tc.declared {
					w.Header().Set("Content-Length", fmt.Sprint(len(body)))
				}
				_, _ = w.Write(body)
			})
			v, err := auth.New(t.Context(), auth.Config{JWKSURL: ks.srv.URL, JWKSAllowHTTP: true, JWKSRefresh: time.Hour, JWKSUnknownKIDRefresh: time.Hour, Now: time.Now})
			switch {
			case tc.ok && err != nil:
				t.Fatalf("a set of %d bytes refused: %v", tc.size, err)
			case tc.ok:
				if _, err := v.Verify(t.Context(), rs.sign(t, claims(fresh))); err != nil {
					t.Fatalf("a token of the set's key: %v", err)
				}
			case err == nil || !strings.Contains(err.Error(), "larger than"):
				t.Fatalf("a set of %d bytes: %v, want an error that says it is too large", tc.size, err)
			}
		})
	}
}

// TestJWKSOverPlainHTTPIsRefused: the keys that authenticate every caller
// are fetched over https only; plain http needs JWKSAllowHTTP (for
// development), and https checks the server's certificate.
func TestJWKSOverPlainHTTPIsRefused(t *testing.T) {
	ks := newKeyServer(t)
	rs := rsaSigner(t, "rsa-1")
	ks.publish(t, rs)
	_, err := auth.New(t.Context(), auth.Config{JWKSURL: ks.srv.URL, JWKSRefresh: time.Hour, JWKSUnknownKIDRefresh: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "https") {
		t.Fatalf("an http:// JWK Set URL: %v, want an error that asks for https", err)
	}
	if n := ks.fetches.Load(); n != 0 {
		t.Errorf("the set was fetched over http %d times", n)
	}
	v := newVerifier(t, auth.Config{JWKSURL: ks.srv.URL, JWKSAllowHTTP: true, JWKSRefresh: time.Hour, JWKSUnknownKIDRefresh: time.Hour, Now: time.Now})
	if _, err := v.Verify(t.Context(), rs.sign(t, claims(fresh))); err != nil {
		t.Errorf("with JWKSAllowHTTP: %v", err)
	}

	untrusted := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { ks.serveSet(w) }))
	untrusted.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake it refuses
	untrusted.StartTLS()
	defer untrusted.Close()
	if _, err := auth.New(t.Context(), auth.Config{JWKSURL: untrusted.URL, JWKSRefresh: time.Hour, JWKSUnknownKIDRefresh: time.Hour}); err == nil {
		t.Error("a JWK Set from a server whose certificate nobody vouches for was accepted")
	}
}

// TestUnknownKIDIntervalHasAFloor: a verifier refuses to fetch the set for
// unknown keys more often than once a second (0 would be a fetch for every
// token naming a made-up key), and to never refresh it.
func TestUnknownKIDIntervalHasAFloor(t *testing.T) {
	ks := newKeyServer(t)
	ks.publish(t, rsaSigner(t, "rsa-1"))
	for _, tc := range []struct {
		name             string
		refresh, unknown time.Duration
		want             string
	}{
		{"unknown kid, 0", time.Hour, 0, "JWKSUnknownKIDRefresh"},
		{"unknown kid, 999ms", time.Hour, 999 * time.Millisecond, "JWKSUnknownKIDRefresh"},
		{"refresh, 0", 0, time.Hour, "JWKSRefresh"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := auth.New(t.Context(), auth.Config{JWKSURL: ks.srv.URL, JWKSAllowHTTP: true, JWKSRefresh: tc.refresh, JWKSUnknownKIDRefresh: tc.unknown})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one naming %s", err, tc.want)
			}
		})
	}
	if _, err := auth.New(t.Context(), auth.Config{JWKSURL: ks.srv.URL, JWKSAllowHTTP: true, JWKSRefresh: time.Hour, JWKSUnknownKIDRefresh: time.Second}); err != nil {
		t.Fatalf("a second: %v", err)
	}
}

// TestConcurrentUnknownKIDsCostOneFetch: 50 requests at once, each with a
// token naming a different made-up key, make the verifier fetch the set
// once in the interval.
func TestConcurrentUnknownKIDsCostOneFetch(t *testing.T) {
	ks := newKeyServer(t)
	rs := rsaSigner(t, "rsa-1")
	ks.publish(t, rs)
	v := newVerifier(t, auth.Config{JWKSURL: ks.srv.URL, JWKSAllowHTTP: true, JWKSRefresh: time.Hour, JWKSUnknownKIDRefresh: time.Hour, Now: time.Now})
	var tokens []string
	for i := range 50 {
		tokens = append(tokens, signer{kid: fmt.Sprint("made-up-", i), method: jwt.SigningMethodRS256, private: rs.private}.sign(t, claims(fresh)))
	}
	before := ks.fetches.Load()
	start := make(chan struct{})
	errs := make(chan error, len(tokens))
	var wg sync.WaitGroup
	for _, tok := range tokens {
		wg.Go(func() {
			<-start
			_, err := v.Verify(t.Context(), tok)
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		wantReason(t, err, auth.ReasonUnknownKey)
	}
	if n := ks.fetches.Load() - before; n > 1 {
		t.Fatalf("%d fetches for 50 tokens with unknown keys at once, want at most 1", n)
	}
}

// TestUnknownKIDFetchesNeverOverlap: with an identity provider slower to
// answer than the interval, a fetch for an unknown key does not start while
// another is in flight, so made-up keys hold at most one request (and one
// connection to the provider) at a time; the others are refused at once.
func TestUnknownKIDFetchesNeverOverlap(t *testing.T) {
	ks := newKeyServer(t)
	rs := rsaSigner(t, "rsa-1")
	ks.publish(t, rs)
	const interval, slow = time.Second, 1500 * time.Millisecond
	v := newVerifier(t, auth.Config{JWKSURL: ks.srv.URL, JWKSAllowHTTP: true, JWKSRefresh: time.Hour, JWKSUnknownKIDRefresh: interval, Now: time.Now})
	var inFlight, most atomic.Int64
	ks.answerWith(func(w http.ResponseWriter, _ *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(slow)
		ks.serveSet(w)
	})
	tok := signer{kid: "made-up", method: jwt.SigningMethodRS256, private: rs.private}.sign(t, claims(fresh))
	deadline := time.Now().Add(interval + slow - interval/4) // a second fetch would start within
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				_, _ = v.Verify(t.Context(), tok)
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	if n := most.Load(); n != 1 {
		t.Fatalf("%d fetches for unknown keys in flight at once, want 1", n)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// BenchmarkVerifyHS256 is the cost authentication adds to each request.
func BenchmarkVerifyHS256(b *testing.B) {
	v, err := auth.New(context.Background(), auth.Config{Secret: []byte(secret), Audience: "segments", Issuer: "https://issuer.example"})
	if err != nil {
		b.Fatal(err)
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(func(c jwt.MapClaims) {
		c["iat"], c["exp"] = time.Now().Unix(), time.Now().Add(time.Hour).Unix()
	})).SignedString([]byte(secret))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(context.Background(), tok); err != nil {
			b.Fatal(err)
		}
	}
}
