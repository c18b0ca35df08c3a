package httpapi_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/httpapi"
)

// layer reads a layer through the API.
func (a *testAPI) layer(slug string) httpapi.Layer {
	a.t.Helper()
	var l httpapi.Layer
	a.mustDo(http.StatusOK, "GET", "/api/v1/layers/"+slug, nil, &l)
	return l
}

func ranges(rs ...[2]int) []httpapi.BucketRange {
	out := []httpapi.BucketRange{}
	for _, r := range rs {
		out = append(out, httpapi.BucketRange(r))
	}
	return out
}

// A layer's buckets through the API, step by step: a new layer is all
// free; percent segments take the lowest free; a raise takes more, a
// lowering gives back its highest; a deletion frees them; a share that
// does not fit is a 409 layer-full that changes nothing; a layer with
// segments cannot be deleted.
func TestLayerBucketsStepByStep(t *testing.T) {
	a := newAPI(t)
	var l httpapi.Layer
	r := a.mustDo(http.StatusCreated, "POST", "/api/v1/layers", map[string]any{"slug": "CHECKOUT", "description": "checkout page"}, &l)
	if r.header.Get("Location") != "/api/v1/layers/CHECKOUT" || l.Description != "checkout page" ||
		len(l.Segments) != 0 || !cmp.Equal(l.Free, ranges([2]int{0, 10000})) {
		t.Fatalf("new layer: %+v, Location %q", l, r.header.Get("Location"))
	}
	a.do("POST", "/api/v1/layers", map[string]any{"slug": "CHECKOUT"}).problem(t, http.StatusConflict)

	var seg httpapi.Segment
	a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": "A", "auto_percent": 30, "layer": "CHECKOUT"}, &seg)
	if seg.Layer == nil || *seg.Layer != "CHECKOUT" {
		t.Fatalf("segment's layer: %+v", seg)
	}
	a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": "B", "auto_percent": 40, "layer": "CHECKOUT"}, nil)
	a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": "M", "layer": "CHECKOUT"}, nil) // manual: no buckets
	a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": "OUTSIDE"}, &seg)
	if seg.Layer != nil {
		t.Fatalf("a segment of no layer shows layer %q", *seg.Layer)
	}
	type step struct {
		what    string
		do      func()
		a, b    []httpapi.BucketRange
		free    []httpapi.BucketRange
		percent map[string]float64
	}
	patch := func(slug string, p float64) func() {
		return func() {
			a.mustDo(http.StatusOK, "PATCH", "/api/v1/segments/"+slug, map[string]any{"auto_percent": p}, nil)
		}
	}
	for _, s := range []step{
		{"created 30 and 40", func() {}, ranges([2]int{0, 3000}), ranges([2]int{3000, 7000}), ranges([2]int{7000, 10000}), map[string]float64{"A": 30, "B": 40}},
		{"A lowered to 10", patch("A", 10), ranges([2]int{0, 1000}), ranges([2]int{3000, 7000}), ranges([2]int{1000, 3000}, [2]int{7000, 10000}), map[string]float64{"A": 10}},
		{"B raised to 55", patch("B", 55), ranges([2]int{0, 1000}), ranges([2]int{1000, 2500}, [2]int{3000, 7000}),
			ranges([2]int{2500, 3000}, [2]int{7000, 10000}), map[string]float64{"B": 55}},
		{"A raised to 20.5", patch("A", 20.5), ranges([2]int{0, 1000}, [2]int{2500, 3000}, [2]int{7000, 7550}),
			ranges([2]int{1000, 2500}, [2]int{3000, 7000}), ranges([2]int{7550, 10000}), map[string]float64{"A": 20.5}},
	} {
		s.do()
		l := a.layer("CHECKOUT")
		want := []httpapi.LayerSegment{{Slug: "A", Ranges: s.a}, {Slug: "B", Ranges: s.b}, {Slug: "M", Ranges: ranges()}}
		for i := range want[:2] {
			p := l.Segments[i].AutoPercent
			if p == nil {
				t.Fatalf("%s: %s has no auto_percent", s.what, want[i].Slug)
			}
			want[i].AutoPercent = p
		}
		if diff := cmp.Diff(want, l.Segments); diff != "" {
			t.Fatalf("%s: segments (-want +got):\n%s", s.what, diff)
		}
		if diff := cmp.Diff(s.free, l.Free); diff != "" {
			t.Fatalf("%s: free (-want +got):\n%s", s.what, diff)
		}
		for slug, p := range s.percent {
			for _, seg := range l.Segments {
				if seg.Slug == slug && *seg.AutoPercent != p {
					t.Fatalf("%s: %s at %v %%", s.what, slug, *seg.AutoPercent)
				}
			}
		}
	}
	// 2450 buckets free: A at 50 % (2950 more) and C at 25 % (2500) do not
	// fit.
	for _, req := range []struct{ method, path string }{{"PATCH", "/api/v1/segments/A"}, {"POST", "/api/v1/segments"}} {
		body := map[string]any{"auto_percent": 50}
		if req.method == "POST" {
			body = map[string]any{"slug": "C", "auto_percent": 25, "layer": "CHECKOUT"}
		}
		p := a.do(req.method, req.path, body).problem(t, http.StatusConflict)
		if p.Type != "urn:segments:problem:layer-full" {
			t.Fatalf("%s: %+v", req.method, p)
		}
	}
	var full struct {
		FreeBuckets int `json:"free_buckets"`
	}
	a.do("POST", "/api/v1/segments", map[string]any{"slug": "C", "auto_percent": 25, "layer": "CHECKOUT"}).decode(t, &full)
	if full.FreeBuckets != 2450 || a.scalar(`SELECT count(*) FROM segments WHERE slug = 'C'`) != 0 {
		t.Fatalf("layer full: free_buckets %d", full.FreeBuckets)
	}
	if diff := cmp.Diff(ranges([2]int{7550, 10000}), a.layer("CHECKOUT").Free); diff != "" {
		t.Fatalf("a refused share changed the layer (-want +got):\n%s", diff)
	}
	// A layer with segments stays; without them it goes.
	p := a.do("DELETE", "/api/v1/layers/CHECKOUT", nil).problem(t, http.StatusConflict)
	if p.Type != "urn:segments:problem:layer-not-empty" {
		t.Fatalf("delete: %+v", p)
	}
	a.mustDo(http.StatusNoContent, "DELETE", "/api/v1/segments/B", nil, nil)
	if diff := cmp.Diff(ranges([2]int{1000, 2500}, [2]int{3000, 7000}, [2]int{7550, 10000}), a.layer("CHECKOUT").Free); diff != "" {
		t.Fatalf("after B's deletion, free (-want +got):\n%s", diff)
	}
	for _, slug := range []string{"A", "M"} {
		a.mustDo(http.StatusNoContent, "DELETE", "/api/v1/segments/"+slug, nil, nil)
	}
	a.mustDo(http.StatusNoContent, "DELETE", "/api/v1/layers/CHECKOUT", nil, nil)
	a.do("GET", "/api/v1/layers/CHECKOUT", nil).problem(t, http.StatusNotFound)
}

// What a layer refuses as input: an unknown layer on a segment (422
// naming layer), a layer in a PATCH (fixed at creation), a bad slug.
func TestLayerInputs(t *testing.T) {
	a := newAPI(t)
	p := a.do("POST", "/api/v1/segments", map[string]any{"slug": "S", "layer": "NO_SUCH"}).problem(t, http.StatusUnprocessableEntity)
	if len(p.Errors) != 1 || p.Errors[0].Pointer != "#/layer" {
		t.Fatalf("unknown layer: %+v", p)
	}
	a.mustDo(http.StatusCreated, "POST", "/api/v1/layers", map[string]any{"slug": "L"}, nil)
	a.createSegment("S")
	p = a.do("PATCH", "/api/v1/segments/S", map[string]any{"layer": "L"}).problem(t, http.StatusUnprocessableEntity)
	if len(p.Errors) != 1 || p.Errors[0].Pointer != "#/layer" {
		t.Fatalf("layer in a PATCH: %+v", p)
	}
	a.do("POST", "/api/v1/layers", map[string]any{"slug": "bad slug"}).problem(t, http.StatusUnprocessableEntity)
	a.do("POST", "/api/v1/segments", map[string]any{"slug": "T", "layer": "bad slug"}).problem(t, http.StatusUnprocessableEntity)
	if n := a.scalar(`SELECT count(*) FROM segments WHERE slug IN ('T')`) + a.scalar(`SELECT count(*) FROM layers WHERE slug <> 'L'`); n != 0 {
		t.Fatalf("refused requests left %d rows", n)
	}
	var page httpapi.LayerList
	a.mustDo(http.StatusCreated, "POST", "/api/v1/layers", map[string]any{"slug": "M"}, nil)
	a.mustDo(http.StatusOK, "GET", "/api/v1/layers?limit=1", nil, &page)
	if len(page.Layers) != 1 || page.Layers[0].Slug != "L" || page.NextAfter == nil || *page.NextAfter != "L" {
		t.Fatalf("first page: %+v", page)
	}
	a.mustDo(http.StatusOK, "GET", "/api/v1/layers?limit=1&after=L", nil, &page)
	if len(page.Layers) != 1 || page.Layers[0].Slug != "M" || page.NextAfter != nil {
		t.Fatalf("second page: %+v", page)
	}
}

// Hand-given segments of one layer exclude each other: adding one to a
// user who holds another is a 409 layer-conflict naming both, and changes
// nothing; so is adding two at once; removing the held one in the same
// change makes room. Later users get a layer's percent segment by their
// layer bucket; explain shows the layer.
func TestLayerConflictsAndTheBucketRule(t *testing.T) {
	a := newAPI(t)
	a.mustDo(http.StatusCreated, "POST", "/api/v1/layers", map[string]any{"slug": "L"}, nil)
	for _, s := range []string{"X", "Y"} {
		a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": s, "layer": "L"}, nil)
	}
	a.createSegment("FREE")
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/1/segments", map[string]any{"add": []string{"X", "FREE"}}, nil)
	conflict := func(body map[string]any, want ...httpapi.LayerConflict) {
		t.Helper()
		r := a.do("POST", "/api/v1/users/1/segments", body)
		p := r.problem(t, http.StatusConflict)
		var got struct {
			Conflicts []httpapi.LayerConflict `json:"conflicts"`
		}
		r.decode(t, &got)
		if p.Type != "urn:segments:problem:layer-conflict" || !cmp.Equal(want, got.Conflicts) {
			t.Fatalf("%v: %+v, conflicts %+v", body, p, got.Conflicts)
		}
	}
	before := a.scalar(`SELECT count(*) FROM membership_history`)
	conflict(map[string]any{"add": []string{"Y"}}, httpapi.LayerConflict{Slug: "Y", Held: "X"})
	conflict(map[string]any{"add": []string{"Y", "FREE"}, "ttl_seconds": 60}, httpapi.LayerConflict{Slug: "Y", Held: "X"})
	conflict(map[string]any{"add": []string{"X", "Y"}, "remove": []string{"FREE"}}, httpapi.LayerConflict{Slug: "Y", Held: "X"})
	// A new user: the registration in front of the refused change is
	// rolled back with it.
	r := a.do("POST", "/api/v1/users/2/segments", map[string]any{"add": []string{"X", "Y"}})
	r.problem(t, http.StatusConflict)
	if n := a.scalar(`SELECT count(*) FROM membership_history`) - before + a.scalar(`SELECT count(*) FROM users WHERE id = 2`); n != 0 {
		t.Fatalf("refused changes left %d rows", n)
	}
	var res httpapi.ChangeSegmentsResponse
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/1/segments", map[string]any{"add": []string{"Y"}, "remove": []string{"X"}}, &res)
	if !cmp.Equal(res.Added, []string{"Y"}) || !cmp.Equal(res.Removed, []string{"X"}) {
		t.Fatalf("swap within the layer: %+v", res)
	}
	// Re-adding the held one is no conflict.
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/1/segments", map[string]any{"add": []string{"Y"}, "ttl_seconds": 3600}, nil)

	// A percent segment of the layer: later users get it iff their layer
	// bucket is in its buckets (0..2999 here).
	a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": "P", "auto_percent": 30, "layer": "L"}, nil)
	var in, out int64
	for id := int64(1000); id < 1400; id++ {
		var got httpapi.UserSegments
		a.mustDo(http.StatusOK, "GET", fmt.Sprintf("/api/v1/users/%d/segments", id), nil, &got)
		held := len(got.Segments) == 1 && got.Segments[0].Slug == "P" && got.Segments[0].Source == "auto"
		if want := domain.LayerBucket("L", id) < 3000; held != want {
			t.Fatalf("user %d (layer bucket %d) holds P: %v", id, domain.LayerBucket("L", id), held)
		}
		if held {
			in++
		} else {
			out++
		}
		var e httpapi.Explanation
		a.mustDo(http.StatusOK, "GET", fmt.Sprintf("/api/v1/users/%d/segments/P", id), nil, &e)
		if e.Layer == nil || e.Layer.Slug != "L" || e.Layer.Bucket != domain.LayerBucket("L", id) ||
			!cmp.Equal(e.Layer.Ranges, ranges([2]int{0, 3000})) || e.PercentRule == nil || *e.PercentRule != held {
			t.Fatalf("explain user %d: %+v", id, e)
		}
	}
	if in < 80 || out < 200 {
		t.Fatalf("%d of 400 later users got a 30 %% segment", in)
	}
	var e httpapi.Explanation
	a.mustDo(http.StatusOK, "GET", "/api/v1/users/1/segments/FREE", nil, &e)
	if e.Layer != nil {
		t.Fatalf("explain of a segment of no layer: %+v", e.Layer)
	}
}

// decode decodes r's body into out.
func (r response) decode(t *testing.T, out any) {
	t.Helper()
	if err := json.Unmarshal(r.body, out); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}
