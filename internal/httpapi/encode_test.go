package httpapi

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/segments-service/segments/internal/domain"
)

func TestUserSegmentsEncodingMatchesEncodingJSON(t *testing.T) {
	at := time.Date(2026, 11, 23, 8, 0, 0, 123456000, time.FixedZone("X", 3*3600))
	later := at.Add(48*time.Hour + time.Nanosecond)
	whole := time.Date(2030, 1, 2, 15, 4, 5, 0, time.UTC)
	for _, ms := range [][]domain.Membership{
		nil,
		{},
		{{Slug: "AVITO_VOICE_MESSAGES", AddedAt: at, Source: domain.SourceManual}},
		{
			{Slug: "A.b-c_1", AddedAt: at, ExpiresAt: &later, Source: domain.SourceAuto},
			{Slug: "Z", AddedAt: whole, ExpiresAt: &whole, Source: domain.SourceManual},
		},
	} {
		want := responded(UserSegments{UserID: 1000, Segments: membershipsFrom(ms)})
		got := appendUserSegments(nil, 1000, ms)
		if !bytes.Equal(got, want) {
			t.Errorf("got  %s\nwant %s", got, want)
		}
	}
}

// responded is what respond writes for v.
func responded(v any) []byte {
	rec := httptest.NewRecorder()
	respond(rec, http.StatusOK, v)
	return rec.Body.Bytes()
}

func FuzzJSONString(f *testing.F) {
	for _, s := range []string{"", "SEG_1", `a"b\c`, "<&>", "\x00\x1f\n\r\t", "\u2028\u2029é", "\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := responded(s)
		if got := append(appendJSONString(nil, s), '\n'); !bytes.Equal(got, want) {
			t.Errorf("%q: got %s, want %s", s, got, want)
		}
	})
}
