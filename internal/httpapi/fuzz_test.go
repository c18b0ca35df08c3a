package httpapi_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"
)

// FuzzAPI sends arbitrary methods, paths and bodies through the real router
// on a real database: whatever comes in, the answer is never a 5xx. Its
// seed corpus (testdata/fuzz/FuzzAPI) runs with every go test; make fuzz
// explores further for a bounded time.
func FuzzAPI(f *testing.F) {
	a := newAPI(f)
	a.createSegment("SEED")
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		req, err := http.NewRequest(method, "http://segments.test"+path, bytes.NewReader(body))
		if err != nil {
			t.Skip("not a request a client can send")
		}
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		a.h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %q with body %q: status %d: %s", method, path, body, rec.Code, rec.Body.Bytes())
		}
	})
}
