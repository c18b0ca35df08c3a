package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/supervise"
)

// StandbyRecorder counts what Standby does, for monitoring.
type StandbyRecorder interface {
	// StandbyRead counts a read the standby answered.
	StandbyRead()
	// StandbyFallback counts a read sent to the primary instead, by why:
	// "down" (unreachable or failing), "lagging" (more than the lag
	// allowed behind), "behind" (not replayed past what this process has
	// seen), "writing" (a write of this process in flight).
	StandbyFallback(reason string)
	// StandbyLag reports how far the standby's replay is behind the
	// primary, in bytes of WAL, and whether it is usable.
	StandbyLag(bytes int64, usable bool)
}

// Standby sends the reads that may be served a little late (cache misses,
// ?at=, explain, members pages) to a streaming standby, exactly: a read
// uses the standby only if it has replayed past the fence, the highest
// WAL position this process must see — the position of every cache
// invalidation it has heard (the relay puts the primary's position in
// each notification) and the end of every write it made — so that a read
// (and the cache fill it makes) is never older than an invalidation the
// process has received or a write it answered. While a write of this
// process runs, reads go to the primary. A standby that is down or more
// than the lag allowed behind is not used. A nil *Standby reads the
// primary.
type Standby struct {
	primary, standby *pgxpool.Pool
	maxLag           time.Duration
	rec              StandbyRecorder
	log              *zap.Logger

	fence     atomic.Uint64 // the WAL position reads must have replayed
	listening atomic.Bool   // invalidations (and so the fence) arrive
	writes    atomic.Int64  // writes of this process in flight
	usable    atomic.Bool   // the monitor's verdict
	synced    atomic.Bool   // the fence holds every write of this process: false at the start and after a lost position
	lost      atomic.Int64  // positions lost so far (see Sync and check)
	mu        sync.Mutex
	samples   []lsnSample // the primary's position over the last maxLag and more
	replayed  atomic.Uint64
}

type lsnSample struct {
	at  time.Time
	lsn uint64
}

// NewStandby returns a Standby reading standby for primary's data,
// refusing it when more than maxLag behind.
func NewStandby(primary, standby *pgxpool.Pool, maxLag time.Duration, rec StandbyRecorder, log *zap.Logger) *Standby {
	return &Standby{primary: primary, standby: standby, maxLag: maxLag, rec: rec, log: log}
}

// Heard raises the fence to lsn, a position the primary had reached when
// an invalidation this process received was sent.
func (s *Standby) Heard(lsn uint64) {
	if s == nil {
		return
	}
	for {
		cur := s.fence.Load()
		if lsn <= cur || s.fence.CompareAndSwap(cur, lsn) {
			return
		}
	}
}

// Invalidator returns what the process's invalidation listener tells:
// c (the read cache, or nil), and the standby whether invalidations
// arrive — while they may be missed, the fence may be low, and reads go
// to the primary.
func (s *Standby) Invalidator(c Invalidator) Invalidator { return standbyListener{s, c} }

type standbyListener struct {
	s *Standby
	c Invalidator
}

func (l standbyListener) Listening(on bool) {
	l.s.listening.Store(on)
	if l.c != nil {
		l.c.Listening(on)
	}
}

func (l standbyListener) Invalidate(source string, ids ...int64) {
	if l.c != nil {
		l.c.Invalidate(source, ids...)
	}
}

func (l standbyListener) InvalidateAll(cause string) {
	if l.c != nil {
		l.c.InvalidateAll(cause)
	}
}

// BeginWrite marks a write of this process in flight: until the returned
// function has run, reads go to the primary. The function raises the
// fence to the primary's position after the write (so that this process's
// later reads see it on the standby only once replayed), then ends the
// mark. A nil Standby returns a function that does nothing.
func (s *Standby) BeginWrite() func(context.Context) {
	if s == nil {
		return func(context.Context) {}
	}
	s.writes.Add(1)
	return func(ctx context.Context) {
		defer s.writes.Add(-1)
		s.Sync(ctx)
	}
}

// Sync raises the fence to the primary's position now: this process's
// later reads see on the standby everything the primary has now, or go to
// the primary. If the position cannot be read, reads go to the primary
// until the monitor reads it.
func (s *Standby) Sync(ctx context.Context) {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), standbyStepTimeout)
	defer cancel()
	lsn, err := currentLSN(ctx, s.primary)
	if err != nil {
		s.lost.Add(1)
		s.synced.Store(false)
		s.log.Warn("could not read the primary's WAL position; reads stay on the primary until it is read", zap.Error(err))
		return
	}
	s.Heard(lsn)
}

// standbyStepTimeout bounds each step a read takes on the standby before
// it goes to the primary instead (a standby that silently stopped
// answering must not hold reads up), and a fence's read of the primary.
const standbyStepTimeout = 2 * time.Second

// readOn runs fn on s's standby if it may answer now, else on pool (or
// the request's transaction, whose reads must see its writes).
func readOn(ctx context.Context, s *Standby, pool *pgxpool.Pool, fn func(q dbtx) error) error {
	if s == nil || inRequestTx(ctx) {
		return fn(on(ctx, pool))
	}
	return s.read(ctx, fn)
}

// read runs fn on the standby if it may answer now, else on the primary.
// A standby that fails the read (not the statement: the connection) is
// marked down and the read goes to the primary.
func (s *Standby) read(ctx context.Context, fn func(q dbtx) error) error {
	if ok, why := s.mayRead(); !ok {
		return s.fallback(why, fn)
	}
	sctx, cancel := context.WithTimeout(ctx, standbyStepTimeout)
	defer cancel()
	conn, err := s.standby.Acquire(sctx)
	if err != nil {
		return s.down(ctx, err, fn)
	}
	// The position, then the data: the data's snapshot is taken after, so
	// it holds at least what the position says. A standby's replay only
	// moves forward, so the position the monitor last read will do when it
	// has reached the fence (most reads: no round trip more); else the
	// standby is asked now.
	reached, err := s.reached(sctx, conn)
	if err != nil {
		conn.Release()
		return s.down(ctx, err, fn)
	}
	if !reached {
		conn.Release()
		return s.fallback("behind", fn)
	}
	err = fn(conn)
	closed := conn.Conn().IsClosed()
	conn.Release()
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		s.rec.StandbyRead()
		return nil
	case ctx.Err() != nil:
		return err
	case errors.As(err, &pgErr) && pgErr.Code == "40001":
		// Canceled by the standby's replay (a recovery conflict).
		return s.fallback("down", fn)
	case closed || sctx.Err() != nil:
		return s.down(ctx, err, fn)
	}
	return err
}

func (s *Standby) fallback(reason string, fn func(q dbtx) error) error {
	s.rec.StandbyFallback(reason)
	return fn(s.primary)
}

func (s *Standby) down(ctx context.Context, err error, fn func(q dbtx) error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if s.usable.Swap(false) {
		s.log.Warn("the standby failed a read; reading the primary until it answers again", zap.Error(err))
	}
	return s.fallback("down", fn)
}

// Monitor returns the loop that watches the standby every interval: its
// replay position against the primary's (usable while no more than the
// lag allowed behind), for Read and for the metrics. Its first round also
// sets the fence to the primary's position, so that nothing this process
// has not heard of since it started is read from an older standby.
func (s *Standby) Monitor(interval time.Duration) supervise.Loop {
	return supervise.Loop{Name: "standby monitor", Run: func(ctx context.Context) error {
		for {
			s.check(ctx)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(interval):
			}
		}
	}}
}

func (s *Standby) check(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	// Whether to sync is decided before the primary's position is read, so
	// that the position read covers every write whose own was lost.
	lost, needSync := s.lost.Load(), !s.synced.Load()
	primary, err := currentLSN(cctx, s.primary)
	if err != nil {
		s.usable.Store(false)
		return
	}
	now := time.Now()
	if needSync {
		// At the start, or after a write's position was lost: what this
		// process has written is at most this far (unless another was lost
		// meanwhile: the next round).
		s.Heard(primary)
		if s.lost.Load() == lost {
			s.synced.Store(true)
		}
	}
	s.mu.Lock()
	s.samples = append(s.samples, lsnSample{now, primary})
	// The newest sample at least maxLag old is what the standby must have
	// replayed; older ones are dropped.
	need := uint64(0)
	for len(s.samples) > 1 && now.Sub(s.samples[1].at) >= s.maxLag {
		s.samples = s.samples[1:]
	}
	if now.Sub(s.samples[0].at) >= s.maxLag {
		need = s.samples[0].lsn
	}
	s.mu.Unlock()

	conn, err := s.standby.Acquire(cctx)
	var replayed uint64
	if err == nil {
		replayed, err = replayLSN(cctx, conn)
		conn.Release()
	}
	if err != nil {
		if s.usable.Swap(false) {
			s.log.Warn("the standby does not answer; reading the primary", zap.Error(err))
		}
		s.rec.StandbyLag(-1, false)
		return
	}
	if replayed < s.replayed.Load() {
		// Replay went back: another server answers at the standby's address
		// (restored, or a new one). What was read of the old one stands;
		// what is read from now on is this one's.
		s.log.Warn("the standby's replay position went back", zap.Uint64("was", s.replayed.Load()), zap.Uint64("now", replayed))
	}
	s.replayed.Store(replayed)
	usable := replayed >= need
	if s.usable.Swap(usable) != usable {
		s.log.Info("standby", zap.Bool("usable", usable), zap.Uint64("behind_bytes", sub(primary, replayed)))
	}
	s.rec.StandbyLag(int64(sub(primary, replayed)), usable)
}

// mayRead says whether a read may try the standby now (see read).
func (s *Standby) mayRead() (bool, string) {
	switch {
	case !s.usable.Load(), !s.listening.Load(), !s.synced.Load():
		return false, "lagging"
	case s.writes.Load() > 0:
		return false, "writing"
	}
	return true, ""
}

// reached says whether the standby behind conn has replayed past the
// fence; conn's next snapshot then holds everything it must.
func (s *Standby) reached(ctx context.Context, conn interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (bool, error) {
	fence := s.fence.Load()
	if s.replayed.Load() >= fence {
		return true, nil
	}
	replayed, err := replayLSN(ctx, conn)
	if err != nil {
		return false, err
	}
	s.raiseReplayed(replayed)
	return replayed >= fence, nil
}

// raiseReplayed records a replay position a read saw, if it is newer.
func (s *Standby) raiseReplayed(lsn uint64) {
	for {
		cur := s.replayed.Load()
		if lsn <= cur || s.replayed.CompareAndSwap(cur, lsn) {
			return
		}
	}
}

func sub(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return 0
}

// currentLSN reads the primary's WAL position.
func currentLSN(ctx context.Context, pool *pgxpool.Pool) (uint64, error) {
	var text string
	if err := pool.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&text); err != nil {
		return 0, fmt.Errorf("read the primary's WAL position: %w", err)
	}
	return ParseLSN(text)
}

// replayLSN reads how far a standby has replayed, as the primary's insert
// position right after the last record replayed (see nextInsert): the
// fence is made of insert positions, so that a standby that has replayed
// everything up to one compares equal to it.
func replayLSN(ctx context.Context, conn interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (uint64, error) {
	var (
		text    *string
		segSize uint64
	)
	const q = `SELECT pg_last_wal_replay_lsn()::text, (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')`
	if err := conn.QueryRow(ctx, q).Scan(&text, &segSize); err != nil {
		return 0, fmt.Errorf("read the standby's replay position: %w", err)
	}
	if text == nil {
		return 0, errors.New("not a standby: pg_last_wal_replay_lsn() is null")
	}
	end, err := ParseLSN(*text)
	if err != nil {
		return 0, err
	}
	return nextInsert(end, segSize), nil
}

// WAL page layout (PostgreSQL's XLOG_BLCKSZ and its page headers, each
// MAXALIGNed): a record starts 8-byte aligned, after a page's header when
// it starts a page.
const (
	walPage            = 8192
	walShortPageHeader = 24
	walLongPageHeader  = 40 // the first page of a segment
)

// nextInsert is the insert position that follows a record ending at end
// (pg_last_wal_replay_lsn() is a record's end, pg_current_wal_insert_lsn()
// where the next record goes): end aligned to 8 bytes, past a page header
// if that is a page's start.
func nextInsert(end, segSize uint64) uint64 {
	p := (end + 7) &^ 7
	switch {
	case segSize > 0 && p%segSize == 0:
		p += walLongPageHeader
	case p%walPage == 0:
		p += walShortPageHeader
	}
	return p
}

// ParseLSN reads a WAL position as PostgreSQL writes it ("16/B374D848").
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("not a WAL position: %q", s)
	}
	return h<<32 | l, nil
}
