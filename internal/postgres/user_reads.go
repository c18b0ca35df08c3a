package postgres

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
)

// UserSegmentsSQL reads a user's active memberships: one row per
// membership, one row of NULLs for a registered user with none, no row for
// an unknown user. (The read of one user, after a registration; the reads
// of registered users go in batches, usersSegmentsSQL.)
const UserSegmentsSQL = `
	SELECT u.id, m.segment_id, s.slug, m.added_at, m.expires_at, m.source
	FROM users u
	LEFT JOIN (memberships m JOIN segments s ON s.id = m.segment_id)
	       ON m.user_id = u.id AND (m.expires_at IS NULL OR m.expires_at > now())
	WHERE u.id = $1
	ORDER BY s.slug`

// usersSegmentsSQL is UserSegmentsSQL for many users at once ($1, distinct
// ids): rows of one user together, each user's by slug.
const usersSegmentsSQL = `
	SELECT u.id, m.segment_id, s.slug, m.added_at, m.expires_at, m.source
	FROM unnest($1::bigint[]) AS q(id)
	JOIN users u ON u.id = q.id
	LEFT JOIN (memberships m JOIN segments s ON s.id = m.segment_id)
	       ON m.user_id = u.id AND (m.expires_at IS NULL OR m.expires_at > now())
	ORDER BY u.id, s.slug`

// UserSegments returns the user's active memberships sorted by slug, and
// whether the user is registered. A known user's read goes into a batch
// with the reads of other users that are waiting for one (see
// readBatcher); an unknown one, if register is set, is registered (with
// its percent segments) and read again in a second round trip, in one
// transaction; else it has no memberships and is left unknown.
func (r *UserRepo) UserSegments(ctx context.Context, userID int64, register bool) ([]domain.Membership, bool, error) {
	type answer struct {
		ms    []domain.Membership
		known bool
	}
	a, err := readAgain(ctx, r.pool, func() (answer, error) {
		ms, known, err := r.userSegments(ctx, userID, register)
		return answer{ms, known}, err
	})
	return a.ms, a.known, err
}

func (r *UserRepo) userSegments(ctx context.Context, userID int64, register bool) ([]domain.Membership, bool, error) {
	var (
		ms    []domain.Membership
		known bool
		err   error
	)
	if inRequestTx(ctx) {
		rows, _ := on(ctx, r.pool).Query(ctx, UserSegmentsSQL, userID)
		ms, known, err = scanOneUser(rows)
	} else {
		ms, known, err = r.reads.read(ctx, userID)
	}
	if err != nil {
		return nil, false, fmt.Errorf("select segments of user %d: %w", userID, dbError(err))
	}
	if known || !register {
		return ms, known, nil
	}

	// A registration is a write: with a standby, this process's reads go
	// to the primary until the standby has it.
	defer r.standby.BeginWrite()(ctx)
	var granted int64
	b := &pgx.Batch{}
	queueRegistration(b, []int64{userID}, func(_, g int64) { granted = g })
	b.Queue(UserSegmentsSQL, userID).Query(func(rows pgx.Rows) error {
		ms, _, err = scanOneUser(rows)
		return err
	})
	if err := on(ctx, r.pool).SendBatch(ctx, b).Close(); err != nil {
		return nil, false, fmt.Errorf("register and select user %d: %w", userID, dbError(err))
	}
	recordAfterCommit(ctx, r.rec, domain.OperationAdd, domain.ReasonAuto, granted)
	return ms, true, nil
}

// scanOneUser reads the rows of UserSegmentsSQL, and whether the user is
// registered.
func scanOneUser(rows pgx.Rows) ([]domain.Membership, bool, error) {
	ms := []domain.Membership{}
	known := false
	err := scanUsersSegments(rows, func(_ int64, m *domain.Membership) {
		known = true
		if m != nil {
			ms = append(ms, *m)
		}
	})
	return ms, known, err
}

// scanUsersSegments reads rows of (user id, segment id, slug, added_at,
// expires_at, source) and calls found for each: with the membership, or
// with nil for a registered user without any. It scans into pgtype
// values rather than pointers: this is the read every cache miss makes,
// and pointer targets cost an allocation and a slower scan plan per
// column.
func scanUsersSegments(rows pgx.Rows, found func(userID int64, m *domain.Membership)) error {
	defer rows.Close()
	var (
		userID             int64
		segmentID          pgtype.Int8
		slug, source       pgtype.Text
		addedAt, expiresAt pgtype.Timestamptz
	)
	for rows.Next() {
		if err := rows.Scan(&userID, &segmentID, &slug, &addedAt, &expiresAt, &source); err != nil {
			return err
		}
		if !slug.Valid {
			found(userID, nil)
			continue
		}
		m := domain.Membership{SegmentID: segmentID.Int64, Slug: slug.String, AddedAt: addedAt.Time, Source: domain.SourceManual}
		if source.String == string(domain.SourceAuto) {
			m.Source = domain.SourceAuto
		}
		if expiresAt.Valid {
			t := expiresAt.Time
			m.ExpiresAt = &t
		}
		found(userID, &m)
	}
	return rows.Err()
}

// scanMembership reads (slug, added_at, expires_at, source).
func scanMembership(row pgx.CollectableRow) (domain.Membership, error) {
	var m domain.Membership
	err := row.Scan(&m.Slug, &m.AddedAt, &m.ExpiresAt, &m.Source)
	return m, err
}

// Batching of reads. When many users' reads miss the cache at once, one
// statement reads them all (usersSegmentsSQL): a statement's round trip,
// parse, plan and executor start-up are paid once for the batch instead of
// once per user. A read that arrives while fewer than maxReadsRunning
// statements are running starts one at once with whatever is waiting
// (itself, when alone): a lone read never waits for company. Reads that
// arrive while that many are running wait, and the first of those to end
// takes them all (up to maxReadBatch) in its next statement.
//
// Each read's statement starts after the read arrived, so its snapshot
// holds every write answered before the read began: batching never makes
// an answer older. Reads of one user waiting together share one row set
// (a single flight); a read never joins a statement already running.
const (
	maxReadsRunning = 4
	maxReadBatch    = 500
)

// readBatcher batches the reads of registered users' memberships.
type readBatcher struct {
	pool    *pgxpool.Pool
	standby *Standby

	mu      sync.Mutex
	waiting []*readCall
	running int
}

// readCall is one read waiting for, or in, a batch.
type readCall struct {
	userID int64
	done   chan struct{}
	ms     []domain.Membership
	known  bool
	err    error
}

var readCalls = sync.Pool{New: func() any { return &readCall{done: make(chan struct{}, 1)} }}

// read returns the user's active memberships sorted by slug, and whether
// the user is registered.
func (b *readBatcher) read(ctx context.Context, userID int64) ([]domain.Membership, bool, error) {
	call := readCalls.Get().(*readCall)
	call.userID, call.ms, call.known, call.err = userID, nil, false, nil
	b.mu.Lock()
	b.waiting = append(b.waiting, call)
	lead := b.running < maxReadsRunning
	if lead {
		b.running++
	}
	b.mu.Unlock()
	if lead {
		b.runBatches()
	}
	select {
	case <-call.done:
	case <-ctx.Done():
		// The batch goes on without us; the call is not reused.
		return nil, false, ctx.Err()
	}
	ms, known, err := call.ms, call.known, call.err
	readCalls.Put(call)
	return ms, known, err
}

// runBatches runs one statement for the reads waiting now; if more have
// come meanwhile and no other statement will take them, it goes on in a
// goroutine of its own, so that the caller's answer is not held up.
func (b *readBatcher) runBatches() {
	b.mu.Lock()
	n := min(len(b.waiting), maxReadBatch)
	if n == 0 { // another statement took them
		b.running--
		b.mu.Unlock()
		return
	}
	batch := make([]*readCall, n)
	copy(batch, b.waiting)
	b.waiting = append(b.waiting[:0], b.waiting[n:]...)
	b.mu.Unlock()

	b.runBatch(batch)

	b.mu.Lock()
	if len(b.waiting) == 0 {
		b.running--
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	go b.runBatches()
}

// runBatch reads batch's users in one statement and hands each call its
// answer.
func (b *readBatcher) runBatch(batch []*readCall) {
	ids := make([]int64, 0, len(batch))
	byUser := make(map[int64][]*readCall, len(batch))
	for _, c := range batch {
		if _, seen := byUser[c.userID]; !seen {
			ids = append(ids, c.userID)
		}
		byUser[c.userID] = append(byUser[c.userID], c)
	}
	// The statement is shared by reads with contexts of their own: it
	// runs to its end (the pool's statement timeout bounds it).
	ctx := context.Background()
	var found map[int64][]domain.Membership
	err := readOn(ctx, b.standby, b.pool, func(q dbtx) error {
		found = make(map[int64][]domain.Membership, len(ids)) // afresh if a failed standby hands over
		rows, _ := q.Query(ctx, usersSegmentsSQL, ids)
		return scanUsersSegments(rows, func(userID int64, m *domain.Membership) {
			ms, ok := found[userID]
			if !ok {
				ms = []domain.Membership{}
			}
			if m != nil {
				ms = append(ms, *m)
			}
			found[userID] = ms
		})
	})
	for userID, calls := range byUser {
		ms, known := found[userID]
		for i, c := range calls {
			c.err, c.known = err, known
			if known {
				if i > 0 {
					ms = append([]domain.Membership(nil), ms...)
				}
				c.ms = ms
			}
			c.done <- struct{}{}
		}
	}
}
