package httpapi

import (
	"bytes"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/segments-service/segments/internal/domain"
)

// The body of a read is what encoding/json writes for its memberships.
// Times are PostgreSQL's: microseconds.
func TestUserSegmentsEncodingMatchesEncodingJSON(t *testing.T) {
	at := time.Date(2026, 11, 23, 8, 0, 0, 123456000, time.FixedZone("X", 3*3600))
	later := at.Add(48*time.Hour + time.Microsecond)
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
		got := appendUserSegments(nil, 1000, cacheForm(nil, ms))
		if !bytes.Equal(got, want) {
			t.Errorf("got  %s\nwant %s", got, want)
		}
	}
}

// Times are written exactly as encoding/json writes a time.Time: the
// fraction's zeros cut, none without a fraction, from before 1970 to the
// end of 9999 (encoding/json refuses later years; no expiry reaches them).
func TestJSONTimeMatchesEncodingJSON(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	instants := []int64{0, 1, 10, 999999, 1_000_000, 1_500_000, -1, -1_000_001, -62135596800000000, 253402300799999999}
	for range 100_000 {
		instants = append(instants, r.Int64N(253402300800000000))
	}
	for range 1000 { // whole seconds and round fractions
		instants = append(instants, r.Int64N(4_000_000_000)*1e6+int64(r.IntN(10))*100_000)
	}
	for _, us := range instants {
		want := responded(time.UnixMicro(us).UTC())
		if got := append(appendJSONTime(nil, us), '\n'); !bytes.Equal(got, want) {
			t.Fatalf("%d: got %s, want %s", us, got, want)
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
