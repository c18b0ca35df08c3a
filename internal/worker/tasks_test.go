package worker

import (
	"errors"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/segments-service/segments/internal/domain"
)

func TestExpireTaskRoundTrip(t *testing.T) {
	e := domain.Expiry{UserID: 1000, Slug: "AVITO_DISCOUNT_30", ExpiresAt: time.Date(2030, 1, 2, 3, 4, 5, 123456000, time.UTC)}
	task, opts, err := NewExpireTask(e)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseExpiry(task)
	if err != nil || got != e {
		t.Fatalf("parsed %+v, %v; want %+v", got, err, e)
	}
	var id string
	var at time.Time
	for _, o := range opts {
		switch o.Type() {
		case asynq.TaskIDOpt:
			id = o.Value().(string)
		case asynq.ProcessAtOpt:
			at = o.Value().(time.Time)
		}
	}
	if id != "expire:1000:AVITO_DISCOUNT_30:1893553445123456" || !at.Equal(e.ExpiresAt) {
		t.Errorf("task id %q, process at %v", id, at)
	}
}

func TestBadExpirePayloadIsNotRetried(t *testing.T) {
	for _, payload := range []string{
		``, `{`, `[]`,
		`{"user_id":0,"slug":"A","expires_at":"2030-01-01T00:00:00Z"}`,
		`{"user_id":1,"slug":"","expires_at":"2030-01-01T00:00:00Z"}`,
		`{"user_id":1,"slug":"A"}`,
	} {
		_, err := parseExpiry(asynq.NewTask(TypeExpireMembership, []byte(payload)))
		if !errors.Is(err, asynq.SkipRetry) {
			t.Errorf("payload %q: %v, want SkipRetry", payload, err)
		}
	}
}
