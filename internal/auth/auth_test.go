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
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/segments-service/segments/internal/auth"
)

const secret = "a test secret of at least 32 bytes, not a real one"

// keyServer serves a JWK Set that a test can change, and counts fetches.
type keyServer struct {
	mu      sync.Mutex
	keys    []jwkset.JWK
	fetches atomic.Int64
	srv     *httptest.Server
}

func newKeyServer(t *testing.T) *keyServer {
	ks := &keyServer{}
	ks.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ks.fetches.Add(1)
		ks.mu.Lock()
		defer ks.mu.Unlock()
		set := jwkset.JWKSMarshal{}
		for _, k := range ks.keys {
			set.Keys = append(set.Keys, k.Marshal())
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(ks.srv.Close)
	return ks
}

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
		Secret: []byte(secret), JWKSURL: ks.srv.URL, Issuer: "https://issuer.example", Audience: "segments",
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
	onlyJWKS := newVerifier(t, auth.Config{JWKSURL: ks.srv.URL, JWKSRefresh: time.Hour, JWKSUnknownKIDRefresh: time.Hour})
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
	v := newVerifier(t, auth.Config{JWKSURL: ks.srv.URL, JWKSRefresh: refresh, JWKSUnknownKIDRefresh: time.Hour, Now: time.Now})
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
