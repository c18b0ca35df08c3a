package loadgen

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
)

// UserSegments reads the segments of a random user from 1 to users.
func UserSegments(base string, users int64) Request {
	return func(int) (*http.Request, error) {
		return http.NewRequest(http.MethodGet, fmt.Sprintf("%s/api/v1/users/%d/segments", base, 1+rand.Int64N(users)), nil)
	}
}

// UserSegmentsZipf reads the segments of a user from 1 to users drawn from
// a Zipf distribution of exponent s (> 1): user k with probability
// proportional to k^-s, so that user 1 is read most. It draws as pgbench's
// random_zipfian(1, users, s) and tools/cmd/bench/wrk/user_segments_zipf.lua
// do.
func UserSegmentsZipf(base string, users int64, s float64) Request {
	// v = 1 and imax = users-1: k in 0..users-1 with probability
	// proportional to (1+k)^-s, user k+1.
	z := rand.NewZipf(rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())), s, 1, uint64(max(users-1, 0)))
	var mu sync.Mutex // a Zipf's source is not safe for concurrent use
	return func(int) (*http.Request, error) {
		if z == nil {
			return nil, errors.New("loadgen: a Zipf exponent must be above 1")
		}
		mu.Lock()
		k := z.Uint64()
		mu.Unlock()
		return http.NewRequest(http.MethodGet, fmt.Sprintf("%s/api/v1/users/%d/segments", base, 1+k), nil)
	}
}

// ChangeSegments adds two segments to a random user from 1 to users and
// removes a third, all distinct, from SEG_1 to SEG_<segments>.
func ChangeSegments(base string, users int64, segments int) Request {
	return func(int) (*http.Request, error) {
		perm := rand.Perm(segments)
		body := fmt.Sprintf(`{"add":["SEG_%d","SEG_%d"],"remove":["SEG_%d"]}`, perm[0]+1, perm[1]+1, perm[2]+1)
		req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/api/v1/users/%d/segments", base, 1+rand.Int64N(users)), strings.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		return req, nil
	}
}

// WithIdempotencyKeys gives every request next makes an Idempotency-Key of
// its own: prefix, then the request's number.
func WithIdempotencyKeys(next Request, prefix string) Request {
	return func(i int) (*http.Request, error) {
		req, err := next(i)
		if err == nil {
			req.Header.Set("Idempotency-Key", fmt.Sprintf("%s-%d", prefix, i))
		}
		return req, err
	}
}

// BearerTransport sends every request with a bearer token.
type BearerTransport struct {
	Token string
	Base  http.RoundTripper
}

// RoundTrip adds the Authorization header to a copy of req.
func (t BearerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+t.Token)
	return t.Base.RoundTrip(req)
}
