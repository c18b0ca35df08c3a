package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/logctx"
)

// Problem types of refused tokens.
const (
	typeInvalidToken      = "urn:segments:problem:invalid-token"
	typeInsufficientScope = "urn:segments:problem:insufficient-scope"
)

// authenticate lets a request through if its bearer token verifies and
// grants scope, and records the caller in the request's context and log
// lines. Without a verifier (authentication off) or for an open route,
// everyone passes as the anonymous caller.
func authenticate(v *auth.Verifier, scope string, obs AuthObserver) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if v == nil || scope == scopeOpen {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			caller, err := v.Verify(r.Context(), bearerToken(r))
			if err != nil {
				e, _ := err.(*auth.Error)
				if e == nil {
					e = &auth.Error{Reason: auth.ReasonMalformed, Detail: err.Error()}
				}
				if obs != nil {
					obs.AuthRefused(e.Reason)
				}
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="segments", error="invalid_token", error_description=%q`, e.Detail))
				writeProblem(w, r, Problem{Type: typeInvalidToken, Title: "Unauthorized", Status: http.StatusUnauthorized, Detail: e.Detail})
				return
			}
			ctx := withCaller(r.Context(), caller)
			if !caller.Has(scope) {
				if obs != nil {
					obs.AuthRefused(auth.ReasonScope)
				}
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="segments", error="insufficient_scope", scope=%q`, scope))
				writeProblem(w, r.WithContext(ctx), Problem{Type: typeInsufficientScope, Title: "Forbidden", Status: http.StatusForbidden,
					Detail: fmt.Sprintf("%s %s needs the scope %s, which the token does not grant", r.Method, r.URL.Path, scope), RequiredScope: scope})
				return
			}
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// bearerToken returns the token of an "Authorization: Bearer <token>"
// header (the scheme in any case), or "".
func bearerToken(r *http.Request) string {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// withCaller records the verified caller: its subject goes on the
// request's log lines and keys its idempotency keys.
func withCaller(ctx context.Context, c auth.Caller) context.Context {
	if st, ok := ctx.Value(requestKey).(*requestState); ok {
		st.subject, st.caller = c.Subject, &c
	}
	return logctx.AddFields(ctx, zap.String("subject", c.Subject))
}

// verifiedCaller returns the request's verified caller, and false when
// authentication is off.
func verifiedCaller(ctx context.Context) (auth.Caller, bool) {
	if st, ok := ctx.Value(requestKey).(*requestState); ok && st.caller != nil {
		return *st.caller, true
	}
	return auth.Caller{}, false
}

// callerFrom returns the subject of the request's verified token; "" when
// authentication is off (every caller is the same one).
func callerFrom(ctx context.Context) string {
	if st, ok := ctx.Value(requestKey).(*requestState); ok {
		return st.subject
	}
	return ""
}

// recordActor puts who makes the request's changes in its context, for
// the audit log: the verified caller's subject (no one when
// authentication is off) and the request's id.
func recordActor(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := domain.Actor{RequestID: requestIDFrom(r.Context())}
		if c, ok := verifiedCaller(r.Context()); ok {
			a.Name = c.Subject
		}
		next.ServeHTTP(w, r.WithContext(domain.WithActor(r.Context(), a)))
	})
}

// fenceWrites tells f of each write before it runs and after it is done:
// the process's reads that could go to a standby go to the primary
// meanwhile, and afterwards to the standby only once it has replayed the
// write.
func fenceWrites(f WriteFence) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			done := f.BeginWrite()
			defer done(r.Context())
			next.ServeHTTP(w, r)
		})
	}
}
