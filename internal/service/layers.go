package service

import (
	"context"

	"github.com/segments-service/segments/internal/domain"
)

// LayerStore is the storage Layers needs. Every method is atomic.
type LayerStore interface {
	// CreateLayer inserts a layer, or returns domain.ErrConflict if the
	// slug is taken.
	CreateLayer(ctx context.Context, l domain.NewLayer) (domain.Layer, error)
	// Layer returns a layer with its segments, or domain.ErrNotFound.
	Layer(ctx context.Context, slug string) (domain.Layer, error)
	// Layers returns up to limit layers whose slugs sort after after.
	Layers(ctx context.Context, after string, limit int) ([]domain.Layer, error)
	// DeleteLayer deletes a layer without segments; it returns
	// domain.ErrNotFound or a *domain.LayerNotEmptyError.
	DeleteLayer(ctx context.Context, slug string) error
}

// Layers manages layers: sets of segments that no user holds two of.
type Layers struct {
	store LayerStore
}

// NewLayers returns Layers on store.
func NewLayers(store LayerStore) *Layers { return &Layers{store: store} }

// Create creates a layer with every bucket free. It returns
// domain.ErrConflict if the slug is taken.
func (l *Layers) Create(ctx context.Context, nl domain.NewLayer) (domain.Layer, error) {
	return l.store.CreateLayer(ctx, nl)
}

// Get returns the layer named slug with its segments and their buckets,
// or domain.ErrNotFound.
func (l *Layers) Get(ctx context.Context, slug string) (domain.Layer, error) {
	return l.store.Layer(ctx, slug)
}

// LayerPage is one page of layers in byte order of slug.
type LayerPage struct {
	Layers []domain.Layer
	// NextAfter is the cursor of the next page; empty on the last page.
	NextAfter string
}

// List returns up to limit layers whose slugs sort after after.
func (l *Layers) List(ctx context.Context, after string, limit int) (LayerPage, error) {
	layers, err := l.store.Layers(ctx, after, limit+1)
	if err != nil {
		return LayerPage{}, err
	}
	p := LayerPage{}
	if last := cutPage(&layers, limit); last != nil {
		p.NextAfter = last.Slug
	}
	p.Layers = layers
	return p, nil
}

// Delete deletes the layer named slug if it has no segments. It returns
// domain.ErrNotFound, or a *domain.LayerNotEmptyError (an ErrConflict).
func (l *Layers) Delete(ctx context.Context, slug string) error {
	return l.store.DeleteLayer(ctx, slug)
}
