package client_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/segments-service/segments/client"
	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/tools/apitest"
	"github.com/segments-service/segments/tools/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Run(m, &env) }

const authSecret = "a client test JWT secret, not a real one, 32+ bytes"

// newClient serves the real router with authentication on, on a database
// of the test's own, and returns the generated client pointed at it,
// sending a token with every scope, as a calling service would.
func newClient(t *testing.T) *client.ClientWithResponses {
	t.Helper()
	pool := env.NewPool(t)
	o := apitest.RouterOptions(t, pool, env.RedisURL,
		map[string]string{"WORKER_QUEUE": "client-test", "REPORT_SECRET": "a client test secret, not a real one, 32+ bytes"},
		time.Now, zap.NewNop())
	v, err := auth.New(context.Background(), auth.Config{Secret: []byte(authSecret)})
	if err != nil {
		t.Fatal(err)
	}
	o.Auth = v
	srv := httptest.NewServer(httpapi.NewRouter(o))
	t.Cleanup(srv.Close)
	token, err := auth.Mint([]byte(authSecret), "client-test", []string{auth.ScopeRead, auth.ScopeWrite, auth.ScopeAdmin}, time.Hour, "", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.NewClientWithResponses(srv.URL+"/api/v1", client.WithRequestEditorFn(func(_ context.Context, req *http.Request) error {
		req.Header.Set("Authorization", "Bearer "+token)
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The generated client against the real router: create a segment, change
// (and retry with an Idempotency-Key) and read a user's segments (an id
// past 2^53 included), an unknown slug's problem, and a report link
// downloaded as CSV.
func TestClientAgainstTheService(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()

	created, err := c.CreateSegmentWithResponse(ctx, nil, client.CreateSegmentRequest{Slug: "CLIENT_A", Description: ptr("from the Go client")})
	if err != nil || created.StatusCode() != http.StatusCreated || created.JSON201.Slug != "CLIENT_A" || created.JSON201.Rollout != nil {
		t.Fatalf("create: %v %d %s", err, created.StatusCode(), created.Body)
	}

	const big = int64(9007199254740993) // 2^53 + 1: JavaScript would address 2^53
	for _, user := range []int64{1000, big} {
		// Sent twice with one Idempotency-Key, as a retry after a timeout
		// would be: the second answer is the first, replayed.
		change := client.ChangeSegmentsRequest{Add: &[]string{"CLIENT_A"}, TtlSeconds: ptr(int64(3600))}
		params := &client.ChangeUserSegmentsParams{IdempotencyKey: ptr(fmt.Sprint("client-change-", user))}
		changed, err := c.ChangeUserSegmentsWithResponse(ctx, user, params, change)
		if err != nil || changed.StatusCode() != http.StatusOK || !slices.Equal(changed.JSON200.Added, []string{"CLIENT_A"}) || changed.JSON200.UserId != user {
			t.Fatalf("change %d: %v %d %s", user, err, changed.StatusCode(), changed.Body)
		}
		retried, err := c.ChangeUserSegmentsWithResponse(ctx, user, params, change)
		if err != nil || retried.StatusCode() != http.StatusOK || string(retried.Body) != string(changed.Body) ||
			retried.HTTPResponse.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("retried change %d: %v %d %s", user, err, retried.StatusCode(), retried.Body)
		}
		read, err := c.GetUserSegmentsWithResponse(ctx, user, nil)
		if err != nil || read.StatusCode() != http.StatusOK || read.JSON200.UserId != user || len(read.JSON200.Segments) != 1 {
			t.Fatalf("read %d: %v %d %s", user, err, read.StatusCode(), read.Body)
		}
		m := read.JSON200.Segments[0]
		if m.Slug != "CLIENT_A" || m.ExpiresAt == nil || m.ExpiresAt.Sub(m.AddedAt).Round(time.Minute) != time.Hour || m.Source != client.MembershipSourceManual {
			t.Fatalf("read %d: %+v", user, m)
		}
		if status := read.HTTPResponse.Header.Get("Cache-Status"); !strings.HasPrefix(status, "segments; ") {
			t.Fatalf("Cache-Status %q", status)
		}
	}

	unknown, err := c.ChangeUserSegmentsWithResponse(ctx, 1000, nil, client.ChangeSegmentsRequest{Add: &[]string{"NO_SUCH_SEGMENT"}})
	if err != nil || unknown.StatusCode() != http.StatusNotFound || unknown.ApplicationproblemJSON404 == nil ||
		!slices.Equal(*unknown.ApplicationproblemJSON404.UnknownSlugs, []string{"NO_SUCH_SEGMENT"}) {
		t.Fatalf("unknown slug: %v %d %s", err, unknown.StatusCode(), unknown.Body)
	}

	link, err := c.CreateHistoryReportWithResponse(ctx, nil, client.ReportRequest{Period: time.Now().UTC().Format("2006-01"), UserId: ptr(int64(1000))})
	if err != nil || link.StatusCode() != http.StatusCreated {
		t.Fatalf("report link: %v %d %s", err, link.StatusCode(), link.Body)
	}
	token := link.JSON201.Url[strings.LastIndex(link.JSON201.Url, "/")+1:]
	csv, err := c.DownloadHistoryReportWithResponse(ctx, token)
	if err != nil || csv.StatusCode() != http.StatusOK || !strings.HasPrefix(csv.HTTPResponse.Header.Get("Content-Type"), "text/csv") ||
		!strings.Contains(string(csv.Body), "1000;CLIENT_A;add;") {
		t.Fatalf("download: %v %d %s", err, csv.StatusCode(), csv.Body)
	}
}

func ptr[T any](v T) *T { return &v }
