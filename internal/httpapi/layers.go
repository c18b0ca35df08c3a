package httpapi

import (
	"net/http"
	"net/url"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/segments-service/segments/internal/domain"
)

// CreateLayerRequest is the body of POST /layers.
type CreateLayerRequest struct {
	Slug        string `json:"slug" validate:"required,slug" example:"CHECKOUT_EXPERIMENTS"`
	Description string `json:"description" validate:"max=1000,text" example:"Experiments on the checkout page"`
}

// BucketRange is the buckets from (included) to to (excluded): [from, to].
type BucketRange [2]int

// Layer is a layer as the API shows it: its segments, the buckets each
// percent segment owns, and the buckets no segment owns. Ranges are
// sorted, half-open [from, to] pairs; adjacent ones are merged.
type Layer struct {
	Slug        string         `json:"slug" example:"CHECKOUT_EXPERIMENTS"`
	Description string         `json:"description" example:"Experiments on the checkout page"`
	CreatedAt   time.Time      `json:"created_at" format:"date-time" example:"2026-11-22T08:00:00Z"`
	Segments    []LayerSegment `json:"segments"`
	Free        []BucketRange  `json:"free" swaggertype:"array,array,integer"`
}

// LayerSegment is a segment of a layer; a manual one owns no buckets.
type LayerSegment struct {
	Slug        string        `json:"slug" example:"CHECKOUT_NEW_BUTTON"`
	AutoPercent *float64      `json:"auto_percent" format:"double" extensions:"x-nullable" example:"30"`
	Ranges      []BucketRange `json:"ranges" swaggertype:"array,array,integer"`
}

// LayerList is one page of layers.
type LayerList struct {
	Layers []Layer `json:"layers"`
	// NextAfter is the after= cursor of the next page; null on the last.
	NextAfter *string `json:"next_after" example:"CHECKOUT_EXPERIMENTS" extensions:"x-nullable"`
}

func rangesOut(rs domain.BucketRanges) []BucketRange {
	out := make([]BucketRange, len(rs))
	for i, r := range rs {
		out[i] = BucketRange{r.From, r.To}
	}
	return out
}

func layerFrom(l domain.Layer) Layer {
	out := Layer{Slug: l.Slug, Description: l.Description, CreatedAt: l.CreatedAt.UTC(),
		Segments: make([]LayerSegment, len(l.Segments)), Free: rangesOut(l.Free())}
	for i, s := range l.Segments {
		out.Segments[i] = LayerSegment{Slug: s.Slug, Ranges: rangesOut(s.Ranges)}
		if s.AutoPercent != nil {
			p := s.AutoPercent.Float()
			out.Segments[i].AutoPercent = &p
		}
	}
	return out
}

// createLayer godoc
//
//	@ID				createLayer
//	@Summary		Create a layer
//	@Description	A layer holds segments that exclude each other: no user ever holds two segments of one layer, whatever gave them. It has 10,000 buckets (layer_bucket of a user: the first 4 bytes of SHA-256 of "layer:<slug>:<user id>", × 10000 / 2^32); a percent segment of the layer owns auto_percent × 100 of them and goes to the users whose bucket it owns. A new layer has no segments and every bucket free. Layers have slugs of their own, apart from segments'.
//	@Tags			layers
//	@Accept			json
//	@Produce		json
//	@Param			layer	body		CreateLayerRequest	true	"The new layer"
//	@Success		201		{object}	Layer				"Created; Location names it"
//	@Header			201		{string}	Location			"/api/v1/layers/{slug}"
//	@Failure		400		{object}	Problem				"Malformed JSON"
//	@Failure		409		{object}	Problem				"The slug is taken"
//	@Failure		413		{object}	Problem				"Body over 1 MiB"
//	@Failure		415		{object}	Problem				"Content-Type is not application/json"
//	@Failure		422		{object}	Problem				"Invalid slug or description"
//	@Router			/layers [post]
func (h *handler) createLayer(w http.ResponseWriter, r *http.Request) {
	var req CreateLayerRequest
	if !decode(w, r, h.validate, &req) {
		return
	}
	l, err := h.layers.Create(r.Context(), domain.NewLayer{Slug: req.Slug, Description: req.Description})
	if err != nil {
		respondError(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/layers/"+url.PathEscape(l.Slug))
	respond(w, http.StatusCreated, layerFrom(l))
}

// listLayers godoc
//
//	@ID				listLayers
//	@Summary		List layers
//	@Description	Layers in byte order of slug, a page at a time, each with its segments and free buckets. Pass the previous page's next_after as after.
//	@Tags			layers
//	@Produce		json
//	@Param			limit	query		int		false	"Page size (1 to 1000)"	default(100)	minimum(1)	maximum(1000)
//	@Param			after	query		string	false	"Return layers whose slug sorts after this one"
//	@Success		200		{object}	LayerList
//	@Failure		400		{object}	Problem	"Bad limit"
//	@Router			/layers [get]
func (h *handler) listLayers(w http.ResponseWriter, r *http.Request) {
	limit, err := limitParam(r.URL.Query().Get("limit"))
	if err != nil {
		statusProblem(w, r, http.StatusBadRequest, err.Error())
		return
	}
	page, err := h.layers.List(r.Context(), r.URL.Query().Get("after"), limit)
	if err != nil {
		respondError(w, r, err)
		return
	}
	resp := LayerList{Layers: make([]Layer, 0, len(page.Layers))}
	for _, l := range page.Layers {
		resp.Layers = append(resp.Layers, layerFrom(l))
	}
	if page.NextAfter != "" {
		resp.NextAfter = &page.NextAfter
	}
	respond(w, http.StatusOK, resp)
}

// getLayer godoc
//
//	@ID				getLayer
//	@Summary		Get a layer
//	@Description	The layer, its segments (sorted by slug) with the buckets each percent one owns, and its free buckets.
//	@Tags			layers
//	@Produce		json
//	@Param			slug	path		string	true	"Layer slug"
//	@Success		200		{object}	Layer
//	@Failure		404		{object}	Problem	"No such layer"
//	@Router			/layers/{slug} [get]
func (h *handler) getLayer(w http.ResponseWriter, r *http.Request) {
	l, err := h.layers.Get(r.Context(), chi.URLParam(r, "slug"))
	if err != nil {
		respondError(w, r, err)
		return
	}
	respond(w, http.StatusOK, layerFrom(l))
}

// deleteLayer godoc
//
//	@ID				deleteLayer
//	@Summary		Delete a layer
//	@Description	Deletes a layer that has no segments (delete them first).
//	@Tags			layers
//	@Produce		json
//	@Param			slug	path	string	true	"Layer slug"
//	@Success		204		"Deleted"
//	@Failure		404		{object}	Problem	"No such layer"
//	@Failure		409		{object}	Problem	"The layer has segments (urn:segments:problem:layer-not-empty)"
//	@Router			/layers/{slug} [delete]
func (h *handler) deleteLayer(w http.ResponseWriter, r *http.Request) {
	if err := h.layers.Delete(r.Context(), chi.URLParam(r, "slug")); err != nil {
		respondError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
