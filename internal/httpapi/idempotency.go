package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/domain"
)

// IdempotencyStore runs requests sent with an Idempotency-Key: each in a
// transaction that commits its effects together with its response
// (postgres.IdempotencyRepo).
type IdempotencyStore interface {
	// Begin opens the transaction, claiming caller's key for it
	// (domain.ErrKeyInUse if another holds it). The context it returns
	// carries the transaction.
	Begin(ctx context.Context, caller, key string) (context.Context, domain.KeyedAttempt, error)
	// Stored returns the response stored under caller's key, or nil.
	Stored(ctx context.Context, caller, key string) (*domain.StoredResponse, error)
}

// IdempotencyObserver counts keyed requests by outcome: "first" (ran and
// stored), "replayed", "in_use" (409), "reused" (422), "not_stored" (ran;
// not a success, so not stored).
type IdempotencyObserver interface {
	IdempotentRequest(outcome string)
}

// Idempotency headers and problem types.
const (
	idempotencyKeyHeader  = "Idempotency-Key"
	replayedHeader        = "Idempotent-Replayed"
	typeKeyInUse          = "urn:segments:problem:idempotency-key-in-use"
	typeKeyReused         = "urn:segments:problem:idempotency-key-reused"
	maxIdempotencyKeySize = 255
)

// idempotent makes a write safe to retry: a request with an
// Idempotency-Key runs in a transaction that also stores its response
// under the caller's key, and a retry with that key gets the stored
// response again (Idempotent-Replayed: true) and changes nothing (what it
// did is rolled back). The same key with another method, path or body is
// refused (422); a retry while the first is running gets 409. Only
// successes are stored: a request refused with a 4xx changed nothing, and
// runs again when retried. Requests without the header run as they are.
//
// With stream set the body is not read ahead (an import's list may be
// 256 MiB): it is hashed as the handler reads it, and what the handler
// leaves unread when a fingerprint is needed.
//
// onUnknownOutcome runs when a commit fails in a way that leaves its
// outcome unknown (the service drops its cached reads then).
func idempotent(store IdempotencyStore, obs IdempotencyObserver, stream bool, onUnknownOutcome func()) func(http.Handler) http.Handler {
	count := func(outcome string) {
		if obs != nil {
			obs.IdempotentRequest(outcome)
		}
	}
	return func(next http.Handler) http.Handler {
		if store == nil {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			keys := r.Header.Values(idempotencyKeyHeader)
			if len(keys) == 0 {
				next.ServeHTTP(w, r)
				return
			}
			if len(keys) > 1 || !validIdempotencyKey(keys[0]) {
				statusProblem(w, r, http.StatusBadRequest,
					"Idempotency-Key must be one header of 1 to 255 printable ASCII characters")
				return
			}
			// Keys are kept per subject: tokens without one would share a
			// key space, and one caller's retry would get another's answer.
			if c, on := verifiedCaller(r.Context()); on && c.Subject == "" {
				statusProblem(w, r, http.StatusBadRequest,
					"Idempotency-Key needs a token with a sub claim: keys are kept per subject, and a token without one would share them with every other such token")
				return
			}
			key := keys[0]
			var fingerprint func() []byte
			if stream {
				fingerprint = hashAsRead(r)
			} else {
				body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
				if err != nil {
					bodyReadProblem(w, r, err)
					return
				}
				r.Body = io.NopCloser(bytes.NewReader(body))
				sum := requestFingerprint(r, body)
				fingerprint = func() []byte { return sum }
			}

			caller := callerFrom(r.Context())
			ctx, attempt, err := store.Begin(r.Context(), caller, key)
			switch {
			case errors.Is(err, domain.ErrKeyInUse):
				count("in_use")
				w.Header().Set("Retry-After", retryAfterSeconds)
				writeProblem(w, r, Problem{Type: typeKeyInUse, Title: "Conflict", Status: http.StatusConflict,
					Detail: "a request with this Idempotency-Key is still running; retry it after that one has been answered"})
				return
			case err != nil:
				respondError(w, r, err)
				return
			}
			defer attempt.Rollback(ctx)

			// The request runs first; whether the key was used before comes
			// out when its response is stored (a retry's effects are then
			// rolled back), or is looked up if it did not succeed.
			rec := &recordedResponse{header: http.Header{}}
			next.ServeHTTP(rec, r.WithContext(ctx))
			if rec.status == 0 {
				rec.status = http.StatusOK
			}
			var stored *domain.StoredResponse
			if rec.status >= 200 && rec.status < 300 {
				err := attempt.Commit(ctx, domain.StoredResponse{
					Fingerprint: fingerprint(), Method: r.Method, Path: r.URL.RequestURI(),
					Status: rec.status, Header: rec.header, Body: append([]byte{}, rec.body.Bytes()...),
				})
				switch {
				case err == nil:
					count("first")
					writeRecorded(w, rec)
					return
				case errors.Is(err, domain.ErrKeyUsed):
				case errors.Is(err, domain.ErrCommitUncertain):
					// The commit may or may not have happened (a cut
					// connection): a retry with the key finds out. What this
					// replica cached of the users involved is unknown now.
					loggerFrom(r.Context()).Warn("keyed request: the commit failed; its outcome is unknown", zap.Error(err))
					onUnknownOutcome()
					respondError(w, r, err)
					return
				default:
					respondError(w, r, err)
					return
				}
			} else {
				attempt.Rollback(ctx)
			}
			if stored, err = store.Stored(r.Context(), caller, key); err != nil {
				respondError(w, r, err)
				return
			}
			switch {
			case stored == nil:
				count("not_stored")
				writeRecorded(w, rec)
			case !bytes.Equal(stored.Fingerprint, fingerprint()):
				count("reused")
				writeProblem(w, r, Problem{Type: typeKeyReused, Title: "Idempotency-Key reused", Status: http.StatusUnprocessableEntity,
					Detail: fmt.Sprintf("this Idempotency-Key was used at %s for %s %s with another request; use a new key for a new request",
						stored.CreatedAt.UTC().Format(time.RFC3339), stored.Method, stored.Path)})
			default:
				count("replayed")
				maps.Copy(w.Header(), stored.Header)
				w.Header().Set(replayedHeader, "true")
				w.WriteHeader(stored.Status)
				_, _ = w.Write(stored.Body)
			}
		})
	}
}

// writeRecorded sends a recorded response.
func writeRecorded(w http.ResponseWriter, rec *recordedResponse) {
	maps.Copy(w.Header(), rec.header)
	w.WriteHeader(rec.status)
	_, _ = w.Write(rec.body.Bytes())
}

// bodyReadProblem answers a body that cannot be read whole.
func bodyReadProblem(w http.ResponseWriter, r *http.Request, err error) {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		statusProblem(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is larger than %d bytes", maxBodyBytes))
		return
	}
	writeProblem(w, r, Problem{Type: typeMalformed, Title: "Request body is malformed", Status: http.StatusBadRequest,
		Detail: "the body cannot be read: " + err.Error()})
}

// validIdempotencyKey accepts 1 to 255 printable ASCII characters.
func validIdempotencyKey(k string) bool {
	if k == "" || len(k) > maxIdempotencyKeySize {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

// requestFingerprint is SHA-256 of the method, the path and query, and
// the body.
func requestFingerprint(r *http.Request, body []byte) []byte {
	h := sha256.New()
	fmt.Fprintf(h, "%s %s\n", r.Method, r.URL.RequestURI())
	h.Write(body)
	return h.Sum(nil)
}

// hashAsRead replaces r's body with one that hashes what is read of it,
// and returns the function that reads the rest (up to maxImportBytes) and
// returns requestFingerprint of the whole.
func hashAsRead(r *http.Request) func() []byte {
	h := sha256.New()
	fmt.Fprintf(h, "%s %s\n", r.Method, r.URL.RequestURI())
	body := io.TeeReader(r.Body, h)
	r.Body = struct {
		io.Reader
		io.Closer
	}{body, r.Body}
	var sum []byte
	return func() []byte {
		if sum == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(body, maxImportBytes))
			sum = h.Sum(nil)
		}
		return sum
	}
}

// recordedResponse holds a keyed request's response until its
// transaction has committed.
type recordedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recordedResponse) Header() http.Header { return r.header }

func (r *recordedResponse) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *recordedResponse) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}
