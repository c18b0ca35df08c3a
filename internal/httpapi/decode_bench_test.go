package httpapi

import (
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// changeBody is a typical POST /users/{user_id}/segments body: three slugs
// to add, one to remove, a TTL.
const changeBody = `{"add":["AVITO_VOICE_MESSAGES","AVITO_DISCOUNT_30","AVITO_DISCOUNT_50"],"remove":["AVITO_PERFORMANCE_VAS"],"ttl_seconds":172800}`

// reusableBody is a request body that can be refilled without allocating.
type reusableBody struct{ strings.Reader }

func (*reusableBody) Close() error { return nil }

// BenchmarkDecodeChangeBody compares reading changeBody the way the service
// did before (encoding/json, DisallowUnknownFields, then a check for
// trailing data) with decodeJSON (go-json-experiment/json with the strict
// options). Validation is left out: it is the same for both. Run with
// -count: each round runs both, one after the other.
func BenchmarkDecodeChangeBody(b *testing.B) {
	decoders := []struct {
		name   string
		decode func(http.ResponseWriter, *http.Request, any) error
	}{
		{"encoding_json", decodeJSONv1},
		{"json_v2_strict", decodeJSON},
	}
	for _, d := range decoders {
		b.Run(d.name, func(b *testing.B) {
			body := &reusableBody{}
			r := httptest.NewRequest(http.MethodPost, "/api/v1/users/1000/segments", nil)
			r.Header.Set("Content-Type", "application/json")
			w := httptest.NewRecorder()
			b.SetBytes(int64(len(changeBody)))
			b.ReportAllocs()
			for b.Loop() {
				body.Reset(changeBody)
				r.Body = body
				var req ChangeSegmentsRequest
				if err := d.decode(w, r, &req); err != nil {
					b.Fatal(err)
				}
				if len(req.Add) != 3 || len(req.Remove) != 1 || req.TTLSeconds == nil {
					b.Fatalf("decoded %+v", req)
				}
			}
		})
	}
}

// decodeJSONv1 is the success path of decodeJSON as it was with
// encoding/json, kept for the comparison.
func decodeJSONv1(w http.ResponseWriter, r *http.Request, dst any) error {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return errors.New("wrong content type")
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("more after the object")
	}
	return nil
}
