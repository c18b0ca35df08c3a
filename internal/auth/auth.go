// Package auth verifies the bearer tokens (JWT) that callers of the API
// present, and mints HS256 tokens for development.
//
// A token is signed with HS256 and the shared secret, or with RS256, ES256
// or EdDSA and a key from a JWK Set fetched over HTTP. The algorithm is
// pinned to the key: an HS256 token is checked only against the secret,
// any other only against a JWK Set key of the matching type (and the JWK's
// own "alg" if it names one), so a token cannot choose how it is checked
// ("none", or an RSA public key used as an HMAC secret). exp is required;
// nbf and iat are honoured with a small leeway; iss and aud are checked
// when configured. Scopes come from the space-separated "scope" claim.
//
// The JWK Set is fetched over https (http only when allowed, for
// development) by a client that follows no redirect, gives up after 5 s
// and refuses a response over 1 MiB: at start, every JWKSRefresh, and for
// a token naming a key the set lacks at most once per
// JWKSUnknownKIDRefresh (at least a second), one such fetch at a time.
package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Scopes the API knows.
const (
	ScopeRead  = "segments:read"
	ScopeWrite = "segments:write"
	ScopeAdmin = "segments:admin"
)

// Config says how tokens are verified. With neither Secret nor JWKSURL
// set, authentication is off.
type Config struct {
	// Secret verifies HS256 tokens; its bytes are used as given.
	Secret []byte
	// JWKSURL is where the JWK Set for RS256, ES256 and EdDSA tokens is:
	// an https URL, or http if JWKSAllowHTTP.
	JWKSURL string
	// JWKSAllowHTTP lets JWKSURL be http:// (for development: anyone on
	// the way could then swap the keys).
	JWKSAllowHTTP bool
	// Issuer and Audience, if set, must be the token's iss and among its
	// aud.
	Issuer, Audience string
	// Leeway is the clock skew allowed on exp, nbf and iat.
	Leeway time.Duration
	// JWKSRefresh is how often the JWK Set is fetched again (a removed key
	// stops working then); it must be positive.
	JWKSRefresh time.Duration
	// JWKSUnknownKIDRefresh is the least time between two extra fetches
	// made because a token names a key the set lacks (a new key works at
	// once; a flood of made-up key ids costs one fetch per interval); at
	// least a second.
	JWKSUnknownKIDRefresh time.Duration
	// Log, if set, logs the fetches of the JWK Set that fail after the
	// first (the keys fetched before stay in use).
	Log *zap.Logger
	// Now tells the time; nil means time.Now.
	Now func() time.Time
}

// Enabled says whether c turns authentication on.
func (c Config) Enabled() bool { return len(c.Secret) > 0 || c.JWKSURL != "" }

// Caller is who a verified token speaks for.
type Caller struct {
	// Subject is the token's sub (may be empty).
	Subject string
	// Scopes are the scopes the token grants.
	Scopes []string
}

// Has says whether the caller holds scope.
func (c Caller) Has(scope string) bool { return slices.Contains(c.Scopes, scope) }

// Reason is why a token was refused, for metrics and the problem detail;
// it never carries the token's contents.
type Reason string

// Reasons a token is refused.
const (
	ReasonMissing      Reason = "missing"
	ReasonMalformed    Reason = "malformed"
	ReasonAlgorithm    Reason = "algorithm"
	ReasonUnknownKey   Reason = "unknown_key"
	ReasonSignature    Reason = "signature"
	ReasonExpired      Reason = "expired"
	ReasonNoExpiry     Reason = "no_expiry"
	ReasonNotYetValid  Reason = "not_yet_valid"
	ReasonIssuer       Reason = "issuer"
	ReasonAudience     Reason = "audience"
	ReasonKeysUnusable Reason = "keys_unavailable"
	// ReasonScope is a valid token without the scope a route needs.
	ReasonScope Reason = "insufficient_scope"
)

// Reasons lists every Reason.
var Reasons = []Reason{ReasonMissing, ReasonMalformed, ReasonAlgorithm, ReasonUnknownKey, ReasonSignature, ReasonExpired,
	ReasonNoExpiry, ReasonNotYetValid, ReasonIssuer, ReasonAudience, ReasonKeysUnusable, ReasonScope}

// Error is a refused token.
type Error struct {
	Reason Reason
	Detail string
}

func (e *Error) Error() string { return e.Detail }

// Verifier checks tokens. It is safe for concurrent use.
type Verifier struct {
	cfg      Config
	parser   *jwt.Parser
	keys     jwkset.Storage // the JWK Set as last fetched; nil without JWKSURL
	refresh  jwkset.Storage // the same set, fetched again on a read that misses
	unknown  *rate.Limiter  // bounds the extra fetches
	fetching sync.Mutex     // held by the extra fetch in flight
}

// algorithms are those accepted with a JWK Set key.
var algorithms = []string{"RS256", "ES256", "EdDSA"}

// Limits of the JWK Set's fetches.
const (
	// jwksTimeout bounds one fetch, body included.
	jwksTimeout = 5 * time.Second
	// jwksMaxBytes bounds a fetched set (a real one is a few KB).
	jwksMaxBytes = 1 << 20
	// minUnknownKIDRefresh is the least JWKSUnknownKIDRefresh: tokens
	// naming made-up keys, which anyone can send, cost at most a fetch a
	// second.
	minUnknownKIDRefresh = time.Second
)

// New returns a Verifier for cfg. With a JWK Set it fetches the set once
// (a failure is returned) and then every cfg.JWKSRefresh until ctx ends.
// It refuses a JWKSURL that is not https (unless cfg.JWKSAllowHTTP), and
// JWK Set intervals below their floors.
func New(ctx context.Context, cfg Config) (*Verifier, error) {
	if !cfg.Enabled() {
		return nil, errors.New("auth: neither a secret nor a JWK Set URL is configured")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	v := &Verifier{cfg: cfg}
	if cfg.JWKSURL != "" {
		if err := checkJWKS(cfg); err != nil {
			return nil, err
		}
		store, err := jwkset.NewStorageFromHTTP(cfg.JWKSURL, jwkset.HTTPClientStorageOptions{
			Client:          jwksClient(),
			Ctx:             ctx,
			HTTPTimeout:     jwksTimeout,
			RefreshInterval: cfg.JWKSRefresh,
			RefreshErrorHandler: func(_ context.Context, err error) {
				if cfg.Log != nil {
					cfg.Log.Warn("fetching the JWK Set failed; the keys fetched before stay in use",
						zap.String("jwks_url", cfg.JWKSURL), zap.Error(err))
				}
			},
		})
		if err != nil {
			return nil, fmt.Errorf("auth: fetch the JWK Set: %w", err)
		}
		refresh, err := jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
			HTTPURLs:          map[string]jwkset.Storage{cfg.JWKSURL: store},
			RateLimitWaitMax:  jwksTimeout,
			RefreshUnknownKID: rate.NewLimiter(rate.Inf, 1), // limited by v.unknown and v.fetching instead, without waiting
		})
		if err != nil {
			return nil, fmt.Errorf("auth: JWK Set client: %w", err)
		}
		v.keys, v.refresh = store, refresh
		v.unknown = rate.NewLimiter(rate.Every(cfg.JWKSUnknownKIDRefresh), 1)
	}
	opts := []jwt.ParserOption{
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(cfg.Now),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// checkJWKS checks cfg's JWK Set URL and intervals.
func checkJWKS(cfg Config) error {
	u, err := url.Parse(cfg.JWKSURL)
	switch {
	case err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
		return fmt.Errorf("auth: the JWK Set URL %q is not an absolute https URL", cfg.JWKSURL)
	case u.Scheme == "http" && !cfg.JWKSAllowHTTP:
		return fmt.Errorf("auth: the JWK Set URL %q is plain http: want https, since whoever can change the set on the way can sign any token (JWKSAllowHTTP allows http for development)", u.Redacted())
	case cfg.JWKSRefresh <= 0:
		return fmt.Errorf("auth: JWKSRefresh is %s: want a positive interval", cfg.JWKSRefresh)
	case cfg.JWKSUnknownKIDRefresh < minUnknownKIDRefresh:
		return fmt.Errorf("auth: JWKSUnknownKIDRefresh is %s: want at least %s (tokens naming made-up keys, which anyone can send, may each fetch the JWK Set once per interval)",
			cfg.JWKSUnknownKIDRefresh, minUnknownKIDRefresh)
	}
	return nil
}

// jwksClient returns the HTTP client every fetch of the JWK Set goes
// through: it follows no redirect, gives up after jwksTimeout, and refuses
// a set larger than jwksMaxBytes.
func jwksClient() *http.Client {
	var next http.RoundTripper = http.DefaultTransport
	if t, ok := next.(*http.Transport); ok {
		next = t.Clone() // its own connections
	}
	return &http.Client{
		Transport: limitedTransport{next: next, max: jwksMaxBytes},
		Timeout:   jwksTimeout,
		CheckRedirect: func(req *http.Request, _ []*http.Request) error {
			return fmt.Errorf("the JWK Set URL answers with a redirect (to %s), which is not followed: configure the set's own URL", req.URL.Redacted())
		},
	}
}

// errJWKSTooLarge refuses a JWK Set response of more than jwksMaxBytes.
var errJWKSTooLarge = fmt.Errorf("the JWK Set is larger than %d bytes (1 MiB), which is refused", jwksMaxBytes)

// limitedTransport refuses a response body of more than max bytes: at
// once if its Content-Length says so, else with errJWKSTooLarge from the
// read that passes max.
type limitedTransport struct {
	next http.RoundTripper
	max  int64
}

func (t limitedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if resp.ContentLength > t.max {
		resp.Body.Close()
		return nil, errJWKSTooLarge
	}
	resp.Body = &limitedBody{r: io.LimitReader(resp.Body, t.max+1), left: t.max, Closer: resp.Body}
	return resp, nil
}

// limitedBody passes on at most max bytes of r (a LimitReader of max+1
// bytes), then errJWKSTooLarge for good if r had more.
type limitedBody struct {
	r    io.Reader
	left int64 // bytes still to pass on; below 0 once r had more
	io.Closer
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, errJWKSTooLarge
	}
	n, err := b.r.Read(p)
	if b.left -= int64(n); b.left < 0 {
		return n + int(b.left), errJWKSTooLarge
	}
	return n, err
}

// claims are the claims the service reads.
type claims struct {
	jwt.RegisteredClaims
	Scope string `json:"scope"`
}

// Verify checks token (without the "Bearer " prefix) and returns its
// caller, or an *Error saying why it is refused.
func (v *Verifier) Verify(ctx context.Context, token string) (Caller, error) {
	if token == "" {
		return Caller{}, &Error{ReasonMissing, "no bearer token in the Authorization header"}
	}
	var c claims
	_, err := v.parser.ParseWithClaims(token, &c, func(t *jwt.Token) (any, error) { return v.key(ctx, t) })
	if err != nil {
		e := refusal(err)
		if e.Reason == ReasonNoExpiry && c.ExpiresAt != nil {
			// The required claim that is missing is the audience.
			e = &Error{ReasonAudience, "the token names no audience (aud); this service requires " + strconv.Quote(v.cfg.Audience)}
		}
		return Caller{}, e
	}
	return Caller{Subject: c.Subject, Scopes: strings.Fields(c.Scope)}, nil
}

// key returns the key that must have signed t, chosen by t's algorithm:
// the secret for HS256, a JWK Set key for the others; no key for any other
// algorithm ("none" among them) or one whose key is not configured.
func (v *Verifier) key(ctx context.Context, t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	switch {
	case alg == "HS256" && len(v.cfg.Secret) > 0:
		return v.cfg.Secret, nil
	case !slices.Contains(algorithms, alg) || v.keys == nil:
		return nil, &Error{ReasonAlgorithm, fmt.Sprintf("tokens signed with %s are not accepted", strconv.Quote(alg))}
	}
	kid, _ := t.Header["kid"].(string)
	if kid == "" {
		return nil, &Error{ReasonUnknownKey, "the token names no key (kid)"}
	}
	jwk, err := v.keys.KeyRead(ctx, kid)
	if errors.Is(err, jwkset.ErrKeyNotFound) {
		jwk, err = v.fetchFor(ctx, kid)
	}
	switch {
	case errors.Is(err, jwkset.ErrKeyNotFound):
		return nil, &Error{ReasonUnknownKey, "the token's key (kid) is not in the JWK Set"}
	case err != nil:
		return nil, &Error{ReasonKeysUnusable, "the JWK Set cannot be read"}
	}
	if a := jwk.Marshal().ALG.String(); a != "" && a != alg {
		return nil, &Error{ReasonAlgorithm, fmt.Sprintf("the key is for %s, the token says %s", a, alg)}
	}
	key := jwk.Key()
	ok := false
	switch k := key.(type) {
	case *rsa.PublicKey:
		ok = alg == "RS256"
	case *ecdsa.PublicKey:
		ok = alg == "ES256" && k.Curve == elliptic.P256()
	case ed25519.PublicKey:
		ok = alg == "EdDSA"
	}
	if !ok {
		return nil, &Error{ReasonAlgorithm, fmt.Sprintf("the key (kid) does not sign %s", alg)}
	}
	return key, nil
}

// fetchFor fetches the JWK Set again for a token naming kid, which the set
// lacked, and reads kid from it. It returns jwkset.ErrKeyNotFound at once,
// without fetching, while another such fetch is in flight or if the last
// began less than JWKSUnknownKIDRefresh ago; a failed fetch (logged) is
// jwkset.ErrKeyNotFound too.
func (v *Verifier) fetchFor(ctx context.Context, kid string) (jwkset.JWK, error) {
	if !v.fetching.TryLock() {
		return jwkset.JWK{}, jwkset.ErrKeyNotFound
	}
	defer v.fetching.Unlock()
	if !v.unknown.Allow() {
		return jwkset.JWK{}, jwkset.ErrKeyNotFound
	}
	return v.refresh.KeyRead(ctx, kid)
}

// refusal turns a parse error into an *Error.
func refusal(err error) *Error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, jwt.ErrTokenExpired):
		return &Error{ReasonExpired, "the token has expired"}
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing): // exp, or aud (see Verify)
		return &Error{ReasonNoExpiry, "the token has no expiry (exp)"}
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return &Error{ReasonNotYetValid, "the token is not valid yet (nbf or iat is in the future)"}
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return &Error{ReasonIssuer, "the token's issuer (iss) is not the one this service trusts"}
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return &Error{ReasonAudience, "the token is not meant for this service (aud)"}
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return &Error{ReasonSignature, "the token's signature does not verify"}
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return &Error{ReasonAlgorithm, "the token's algorithm is not accepted"}
	default:
		return &Error{ReasonMalformed, "the token is not a well-formed JWT"}
	}
}

// Mint returns an HS256 token signed with secret for subject, granting
// scopes, valid for ttl from now; iss and aud are set if not empty.
func Mint(secret []byte, subject string, scopes []string, ttl time.Duration, issuer, audience string, now time.Time) (string, error) {
	c := claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   subject,
			Issuer:    issuer,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
		Scope: strings.Join(scopes, " "),
	}
	if audience != "" {
		c.Audience = jwt.ClaimStrings{audience}
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
}
