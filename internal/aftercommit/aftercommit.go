// Package aftercommit defers work that must follow a commit (queueing
// tasks, dropping cached answers, counting what changed) while a request
// runs inside a transaction that a layer above the stores commits: a
// request that carries an Idempotency-Key runs its effect and the storing
// of its response in one transaction, and nothing may act on the effect
// before that transaction has committed.
//
// Without such a transaction in the context, Do runs the work at once: the
// stores commit each call themselves, before returning.
package aftercommit

import (
	"context"
	"sync"
)

type key struct{}

// Queue is the work deferred until a transaction commits.
type Queue struct {
	mu  sync.Mutex
	fns []func()
}

// With returns ctx carrying a new Queue, for work done in a transaction
// that the caller will commit (then Run) or roll back (then drop it).
func With(ctx context.Context) (context.Context, *Queue) {
	q := &Queue{}
	return context.WithValue(ctx, key{}, q), q
}

// Do runs fn once ctx's transaction has committed: at once if ctx carries
// no Queue, else when its Run is called (never, if it rolls back).
func Do(ctx context.Context, fn func()) {
	if q, ok := ctx.Value(key{}).(*Queue); ok {
		q.mu.Lock()
		q.fns = append(q.fns, fn)
		q.mu.Unlock()
		return
	}
	fn()
}

// Run runs the deferred work in the order it was deferred.
func (q *Queue) Run() {
	q.mu.Lock()
	fns := q.fns
	q.fns = nil
	q.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}
