package events

import (
	"context"

	"github.com/segments-service/segments/internal/domain"
)

// Publish lets the benchmark time one batch's XADDs.
func (r *Relay) Publish(ctx context.Context, events []domain.Event) error {
	return r.publish(ctx, events)
}
