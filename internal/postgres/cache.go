package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/supervise"
)

// CacheChannel is the notification channel of the read cache. A payload
// is "<microseconds since the Unix epoch> <ids> <WAL position>": the time
// the oldest of the changes was written, the user ids to drop,
// comma-separated, or "*" for every user, and the primary's WAL position
// when it was sent (past every change it names: a standby that has
// replayed that far holds them; optional). An operator can flush every
// replica's cache with
//
//	NOTIFY segments_cache, '0 *';
const CacheChannel = "segments_cache"

// relayBatch bounds the queued rows one relay takes (each row lists the
// users of one statement, at most 20,000).
const relayBatch = 50

// idsPerNotification keeps a payload under PostgreSQL's 8,000 bytes with
// 19-digit ids.
const idsPerNotification = 390

// relaySQL moves queued invalidations to notifications, atomically: the
// rows it deletes are the ones it notifies about, and rows another relay
// holds are skipped. It returns how many rows it took.
const relaySQL = `
	WITH taken AS (
		DELETE FROM cache_invalidations
		WHERE ctid = ANY (ARRAY(SELECT ctid FROM cache_invalidations LIMIT $1 FOR UPDATE SKIP LOCKED))
		RETURNING user_ids, at
	), summary AS (
		SELECT count(*) AS taken, min(at) AS since, bool_or(user_ids IS NULL) AS everyone FROM taken
	), ids AS (
		SELECT DISTINCT u.id FROM taken, unnest(taken.user_ids) AS u(id)
	), lists AS (
		SELECT string_agg(id::text, ',' ORDER BY id) AS list
		FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1) / $2 AS n FROM ids) AS numbered
		GROUP BY n
	)
	SELECT (SELECT taken FROM summary),
	       (SELECT count(pg_notify('` + CacheChannel + `', (extract(epoch FROM s.since) * 1000000)::bigint || ' ' || p.list
	                                                || ' ' || pg_current_wal_insert_lsn()))
	        FROM summary s,
	             LATERAL (SELECT '*' AS list WHERE s.everyone
	                      UNION ALL
	                      SELECT list FROM lists WHERE NOT s.everyone) AS p)`

// relayLock is the session advisory lock the one relaying process holds.
const relayLock int64 = 7346012917432108716

// Relay timing: a process that is not the relay tries to become it this
// often; the relay vacuums the queue this often while rows pass through it
// (autovacuum, once a minute at best, leaves the dead rows of thousands of
// changes a second for every relay round to scan).
const (
	relayStandby = time.Second
	relayVacuum  = time.Second
)

// InvalidationRelay returns the loop that sends the invalidations the
// membership triggers queue as notifications on CacheChannel, every
// interval. Every API process runs it, whether or not its own cache is on,
// so that the queue is drained while any of them runs; one at a time
// relays (it holds a session advisory lock on a connection of its own, made
// with cfg), the others stand by and take over within a second when it
// goes. Run it with supervise.Run.
func InvalidationRelay(cfg *pgx.ConnConfig, interval time.Duration, log *zap.Logger) supervise.Loop {
	cfg = cfg.Copy()
	cfg.RuntimeParams["application_name"] = "segments cache relay " + processName()
	return supervise.Loop{
		Name: "cache_relay",
		Run:  func(ctx context.Context) error { return relay(ctx, cfg, interval, log) },
	}
}

func relay(ctx context.Context, cfg *pgx.ConnConfig, interval time.Duration, log *zap.Logger) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := lead(ctx, conn, relayLock, relayStandby); err != nil {
		return err
	}
	log.Info("this process relays cache invalidations")

	t := time.NewTicker(interval)
	defer t.Stop()
	vacuum, relayed, lastVacuum := true, 0, time.Now()
	for {
		taken, err := relayOnce(ctx, conn)
		if err != nil {
			return err
		}
		relayed += taken
		if vacuum && relayed > 0 && time.Since(lastVacuum) >= relayVacuum {
			if _, err := conn.Exec(ctx, `VACUUM cache_invalidations`); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				log.Warn("cannot vacuum cache_invalidations; leaving it to autovacuum", zap.Error(err))
				vacuum = false
			}
			relayed, lastVacuum = 0, time.Now()
		}
		if taken == relayBatch {
			continue // more are queued
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// relayOnce relays one batch of queued rows and returns how many it took.
func relayOnce(ctx context.Context, conn *pgx.Conn) (int, error) {
	var taken int
	if err := conn.QueryRow(ctx, relaySQL, relayBatch, idsPerNotification).Scan(&taken, nil); err != nil {
		return 0, fmt.Errorf("relay cache invalidations: %w", dbError(err))
	}
	return taken, nil
}

// Invalidator is the cache the listener keeps coherent.
type Invalidator interface {
	// Listening is called with true once notifications arrive, and with
	// false when they may have been missed.
	Listening(on bool)
	Invalidate(source string, ids ...int64)
	InvalidateAll(cause string)
}

// LagRecorder records how long a change took to reach the cache.
type LagRecorder interface {
	CacheNotificationLag(time.Duration)
}

// Heartbeat settings of the listener: after heartbeatIdle without a
// notification it pings its connection, and gives up on it if the ping
// takes longer than heartbeatTimeout. They bound how long a replica cut off
// from the database without a reset (a silent network partition) keeps
// serving what it cached.
const (
	heartbeatIdle    = time.Second
	heartbeatTimeout = time.Second
)

// InvalidationListener returns the loop that keeps c coherent with the
// database: it listens on CacheChannel over a connection of its own, made
// with cfg, drops the users each notification names, and tells c whether
// it is listening — so that c serves nothing while a notification could be
// missed. Run it with supervise.Run, which reconnects after a failure.
//
// Its session is named ListenerName() in pg_stat_activity.
//
// heard, if not nil, is told the WAL position of each notification before
// its users are dropped, and the primary's position each time the listener
// (re)connects (what it may have missed is older): see Standby.Heard.
func InvalidationListener(cfg *pgx.ConnConfig, c Invalidator, rec LagRecorder, heard func(lsn uint64), now func() time.Time, log *zap.Logger) supervise.Loop {
	cfg = cfg.Copy()
	cfg.RuntimeParams["application_name"] = ListenerName()
	return supervise.Loop{
		Name: "cache_listener",
		Run: func(ctx context.Context) error {
			err := listen(ctx, cfg, c, rec, heard, now, log)
			if ctx.Err() == nil {
				log.Warn("read cache off: lost its notification connection", zap.Error(err))
			}
			return err
		},
		Stopped: func() { c.Listening(false) },
	}
}

// ListenerName is the application_name of this process's listener
// session: "segments cache listener <host>:<pid>".
func ListenerName() string { return "segments cache listener " + processName() }

func processName() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s:%d", host, os.Getpid())
}

func listen(ctx context.Context, cfg *pgx.ConnConfig, c Invalidator, rec LagRecorder, heard func(uint64), now func() time.Time, log *zap.Logger) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+CacheChannel); err != nil {
		return err
	}
	// The primary's position now: what this listener may have missed is
	// older (and so is a notification that carries none).
	position := func() (uint64, error) {
		var lsn string
		if err := conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&lsn); err != nil {
			return 0, err
		}
		return ParseLSN(lsn)
	}
	if heard != nil {
		pos, err := position()
		if err != nil {
			return err
		}
		heard(pos)
	}
	c.Listening(true)
	log.Info("read cache on: listening for changes", zap.Uint32("backend_pid", conn.PgConn().PID()))
	for {
		wctx, cancel := context.WithTimeout(ctx, heartbeatIdle)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			if err := apply(n.Payload, c, rec, heard, position, now, log); err != nil {
				return err
			}
		case ctx.Err() != nil:
			return ctx.Err()
		case pgconn.Timeout(err):
			pctx, cancel := context.WithTimeout(ctx, heartbeatTimeout)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("heartbeat: %w", err)
			}
		default:
			return err
		}
	}
}

// apply drops what one notification names. A payload it cannot read
// flushes everything: dropping too much is safe.
//
// With heard, the notification's WAL position goes to it first (a fill
// that starts once the users are dropped must not read a standby older
// than the change); a notification without one (an operator's, or an
// older relay's) gets the primary's position now, from position.
func apply(payload string, c Invalidator, rec LagRecorder, heard func(uint64), position func() (uint64, error), now func() time.Time, log *zap.Logger) error {
	at, ids, all, lsn, perr := parseInvalidation(payload)
	if heard != nil {
		if perr != nil || lsn == 0 {
			pos, err := position()
			if err != nil {
				return err
			}
			lsn = pos
		}
		heard(lsn)
	}
	if perr != nil {
		log.Warn("unreadable cache notification; dropping the whole cache", zap.String("payload", payload), zap.Error(perr))
		c.InvalidateAll("notified")
		return nil
	}
	if all {
		c.InvalidateAll("notified")
	} else {
		c.Invalidate("notified", ids...)
	}
	if !at.IsZero() {
		rec.CacheNotificationLag(now().Sub(at))
	}
	return nil
}

// parseInvalidation reads a CacheChannel payload. A zero time is reported
// as the zero time.Time.
func parseInvalidation(payload string) (at time.Time, ids []int64, all bool, lsn uint64, err error) {
	micros, rest, ok := strings.Cut(payload, " ")
	if !ok {
		return at, nil, false, 0, errors.New("no space")
	}
	us, err := strconv.ParseInt(micros, 10, 64)
	if err != nil {
		return at, nil, false, 0, fmt.Errorf("time: %w", err)
	}
	if us != 0 {
		at = time.UnixMicro(us)
	}
	list, pos, hasPos := strings.Cut(rest, " ")
	if hasPos {
		if lsn, err = ParseLSN(pos); err != nil {
			return at, nil, false, 0, err
		}
	}
	if list == "*" {
		return at, nil, true, lsn, nil
	}
	ids = make([]int64, 0, strings.Count(list, ",")+1)
	for s := range strings.SplitSeq(list, ",") {
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return at, nil, false, 0, fmt.Errorf("user id: %w", err)
		}
		ids = append(ids, id)
	}
	return at, ids, false, lsn, nil
}
