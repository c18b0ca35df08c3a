package httpapi

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/logctx"
)

type ctxKey int

const requestKey ctxKey = 0

// requestIDHeader carries the request id in and out.
const requestIDHeader = "X-Request-ID"

// requestState is what the middleware keeps of a request in its context.
type requestState struct {
	id string
	// unmatched is set when no route matched (a 404 or 405 of the router).
	unmatched bool
	// subject is the verified token's subject.
	subject string
	// caller is the verified token's caller; nil when authentication is
	// off.
	caller *auth.Caller
}

func requestIDFrom(ctx context.Context) string {
	if st, ok := ctx.Value(requestKey).(*requestState); ok {
		return st.id
	}
	return ""
}

// markUnmatched records that no route matched the request, so that it is
// counted under the route "unmatched", not under a mount's pattern.
func markUnmatched(ctx context.Context) {
	if st, ok := ctx.Value(requestKey).(*requestState); ok {
		st.unmatched = true
	}
}

// loggerFrom returns the request's logger, which stamps every line with the
// request id.
func loggerFrom(ctx context.Context) *zap.Logger {
	return logctx.From(ctx, zap.NewNop())
}

// validRequestID accepts a caller's id if it is short and printable ASCII,
// so that it can be logged and echoed safely.
func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			return false
		}
	}
	return true
}

// requestContext gives every request an id (the caller's X-Request-ID if
// usable) and a logger carrying it; it echoes the id in the response.
func requestContext(log *zap.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id := r.Header.Get(requestIDHeader)
			if !validRequestID(id) {
				id = fmt.Sprintf("%016x", rand.Uint64())
			}
			w.Header().Set(requestIDHeader, id)
			ctx := context.WithValue(r.Context(), requestKey, &requestState{id: id})
			ctx = logctx.With(ctx, log, zap.String("request_id", id))
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// validText reports whether s is text PostgreSQL stores: valid UTF-8
// without NUL bytes.
func validText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// textOnly answers 400 for a request whose path or query holds bytes that
// are not text (invalid UTF-8, NUL) once decoded, before anything reaches
// a handler or the database.
func textOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bad := ""
		if !validText(r.URL.Path) {
			bad = "path"
		}
		var query url.Values
		if r.URL.RawQuery != "" {
			query = r.URL.Query()
		}
		for name, values := range query {
			for _, v := range append(values, name) {
				if bad == "" && !validText(v) {
					bad = "query parameter " + strconv.QuoteToASCII(name)
				}
			}
		}
		if bad != "" {
			statusProblem(w, r, http.StatusBadRequest, "the "+bad+" holds bytes that are not UTF-8 text (or a NUL byte) once percent-decoded")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// deadline bounds the work of each request; zero means no bound.
func deadline(timeout time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if timeout <= 0 {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), timeout)
			defer cancel()
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// accessLog reports every request to the observer (if any) and logs a line
// for the ones which says: all, none, or (the default) errors, those
// answered 400 or more.
func accessLog(log *zap.Logger, which string, observer RequestObserver) func(http.Handler) http.Handler {
	minStatus := http.StatusBadRequest
	switch which {
	case "all":
		minStatus = 0
	case "none":
		minStatus = 1000
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
			defer func() {
				status, elapsed := ww.Status(), time.Since(start)
				if status == 0 {
					status = http.StatusOK
				}
				route := chi.RouteContext(r.Context()).RoutePattern()
				if st, ok := r.Context().Value(requestKey).(*requestState); ok && st.unmatched {
					route = ""
				}
				if observer != nil {
					observer.ObserveRequest(route, r.Method, status, elapsed)
				}
				if status < minStatus || !log.Core().Enabled(zap.InfoLevel) {
					return
				}
				log.Info("request",
					zap.String("request_id", requestIDFrom(r.Context())),
					zap.String("subject", callerFrom(r.Context())),
					zap.String("method", r.Method),
					zap.String("path", loggedPath(r.URL.Path)),
					zap.String("route", route),
					zap.Int("status", status),
					zap.Int("bytes", ww.BytesWritten()),
					zap.Duration("duration", elapsed),
				)
			}()
			next.ServeHTTP(ww, r)
		})
	}
}

// reportPrefixes are the paths under which a report link's token follows:
// whoever reads the logs must not be able to download the report.
var reportPrefixes = []string{"/api/v1/reports/history/", "/api/v1/reports/members/"}

// loggedPath is path as the access log shows it: a report link's token
// (and anything after it) replaced with {token}.
func loggedPath(path string) string {
	for _, prefix := range reportPrefixes {
		if strings.HasPrefix(path, prefix) && len(path) > len(prefix) {
			return prefix + "{token}"
		}
	}
	return path
}

// recoverer turns a handler's panic into a logged 500 (if nothing was
// written yet). http.ErrAbortHandler passes through: it is how a handler
// cuts a response off on purpose.
func recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			rec := recover()
			if rec == nil {
				return
			}
			if rec == http.ErrAbortHandler {
				panic(rec)
			}
			loggerFrom(r.Context()).Error("panic", zap.Any("panic", rec), zap.ByteString("stack", debug.Stack()))
			if ww, ok := w.(middleware.WrapResponseWriter); !ok || ww.Status() == 0 {
				statusProblem(w, r, http.StatusInternalServerError, "the server failed to handle the request; report the request_id to the operators")
			}
		}()
		next.ServeHTTP(w, r)
	})
}
