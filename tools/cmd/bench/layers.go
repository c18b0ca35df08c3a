package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/segments-service/segments/tools/loadgen"
)

// layersPhase times 50 % rollouts over every user, a segment outside
// layers and one in a layer of its own, interleaved (outside, layered,
// layered, outside: each kind writes once into the smaller table and once
// into the larger), each after a checkpoint, and reports the layered ones'
// time as a ratio to the others'.
func (b *bench) layersPhase(ctx context.Context) error {
	stamp := time.Now().Unix()
	walls := map[bool]time.Duration{}
	for i, layered := range []bool{false, true, true, false} {
		slug := fmt.Sprintf("HALF_%d_%d", stamp, i)
		body := fmt.Sprintf(`{"slug":%q,"auto_percent":50}`, slug)
		name := "50 % rollout, outside layers"
		if layered {
			layer := fmt.Sprintf("LAYER_%d_%d", stamp, i)
			if err := callAPI(ctx, http.MethodPost, b.svc.base+"/api/v1/layers", fmt.Sprintf(`{"slug":%q}`, layer), nil); err != nil {
				return err
			}
			body = fmt.Sprintf(`{"slug":%q,"auto_percent":50,"layer":%q}`, slug, layer)
			name = "50 % rollout, in a layer"
		}
		if err := b.settle(ctx); err != nil {
			return err
		}
		b.log("phase: %s over %d users", name, b.o.users)
		t0 := time.Now()
		if err := callAPI(ctx, http.MethodPost, b.svc.base+"/api/v1/segments", body, nil); err != nil {
			return err
		}
		status, assigned, err := b.waitRollout(ctx, slug)
		wall := time.Since(t0)
		if err == nil && status != "done" {
			err = fmt.Errorf("the rollout of %s ended %s", slug, status)
		}
		if err != nil {
			return err
		}
		walls[layered] += wall
		b.rep.add(fmt.Sprintf("%s (%d of %d users)", name, assigned, b.o.users), loadgen.Result{}, wall,
			fmt.Sprintf("%.0f rows/s", float64(assigned)/wall.Seconds()))
	}
	b.rep.add("layered rollouts against the others (total time)", loadgen.Result{}, 0,
		fmt.Sprintf("%.2f×", walls[true].Seconds()/walls[false].Seconds()))
	return nil
}
