package service

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/segments-service/segments/internal/domain"
)

// HistoryStore is the storage Reports needs.
type HistoryStore interface {
	// CopyHistoryCSV streams q's history to w as CSV, in time order, with
	// the database doing the formatting; memory stays flat whatever the size.
	CopyHistoryCSV(ctx context.Context, q domain.HistoryQuery, w io.Writer) error
	// UserHistory returns up to limit events of the user in [from, to) that
	// come after the cursor, in time order.
	UserHistory(ctx context.Context, userID int64, from, to time.Time, after domain.HistoryCursor, limit int) ([]domain.HistoryEvent, error)
	// CopyMembersCSV streams the active members of the segment with id
	// segmentID to w as CSV, in user id order, the database doing the
	// formatting. It returns domain.ErrNotFound if the segment is gone.
	CopyMembersCSV(ctx context.Context, segmentID int64, w io.Writer) error
	// SegmentExists reports whether the segment with id segmentID exists.
	SegmentExists(ctx context.Context, segmentID int64) (bool, error)
}

// HistoryPage is one page of a user's history.
type HistoryPage struct {
	Events []domain.HistoryEvent
	// Next is the cursor of the next page; nil on the last page.
	Next *domain.HistoryCursor
}

// Reports hands out signed links to history reports and produces them.
//
// A link's token carries the period, the user (or none) and its expiry,
// signed with HMAC-SHA256 under a secret all replicas share: nothing is
// stored per report, any replica can serve any link, and a token cannot be
// guessed or edited.
type Reports struct {
	store   HistoryStore
	rec     Recorder
	secret  []byte
	linkTTL time.Duration
	now     func() time.Time
	// exports holds a token for each export running in this process.
	exports chan struct{}
}

// ExportRetryAfter is how soon a download refused for too many exports
// running is worth trying again.
const ExportRetryAfter = 5 * time.Second

// NewReports returns Reports signing with secret; links live for linkTTL;
// at most concurrency CSV exports run at once.
func NewReports(store HistoryStore, rec Recorder, secret []byte, linkTTL time.Duration, concurrency int, now func() time.Time) *Reports {
	return &Reports{store: store, rec: rec, secret: secret, linkTTL: linkTTL, now: now, exports: make(chan struct{}, concurrency)}
}

// export runs one CSV export if fewer than the allowed number are
// running, and returns domain.ErrBusy otherwise: a download is never queued
// behind others, holding its client's connection.
func (r *Reports) export(run func() error) error {
	select {
	case r.exports <- struct{}{}:
	default:
		return domain.Busyf(ExportRetryAfter, "%d CSV exports are running on this server, as many as it allows; retry in a few seconds", cap(r.exports))
	}
	defer func() { <-r.exports }()
	return run()
}

// tokenVersion prefixes every token payload, so that the format can change.
const tokenVersion = "v1"

var b64 = base64.RawURLEncoding

// Link returns the token of a report of q and when it expires.
func (r *Reports) Link(q domain.HistoryQuery) (token string, expiresAt time.Time) {
	expiresAt = r.now().Add(r.linkTTL).Truncate(time.Second)
	payload := b64.EncodeToString(fmt.Appendf(nil, "%s.%s.%d.%d", tokenVersion, q.Period, q.UserID, expiresAt.Unix()))
	return payload + "." + r.sign(payload), expiresAt.UTC()
}

func (r *Reports) sign(payload string) string {
	mac := hmac.New(sha256.New, r.secret)
	mac.Write([]byte(payload))
	return b64.EncodeToString(mac.Sum(nil))
}

// membersTokenVersion prefixes the payload of a members report's token: a
// kind of its own, so that no history link opens a member list and no
// member-list link opens a history.
const membersTokenVersion = "m1"

// MembersReport names a segment's member list.
type MembersReport struct {
	SegmentID int64
	Slug      string
}

// MembersLink returns the token of the member list of a segment and when
// it expires.
func (r *Reports) MembersLink(m MembersReport) (token string, expiresAt time.Time) {
	expiresAt = r.now().Add(r.linkTTL).Truncate(time.Second)
	// The slug goes in hex: it may hold dots, the payload's separator.
	payload := b64.EncodeToString(fmt.Appendf(nil, "%s.%d.%s.%d", membersTokenVersion, m.SegmentID, hex.EncodeToString([]byte(m.Slug)), expiresAt.Unix()))
	return payload + "." + r.sign(payload), expiresAt.UTC()
}

// OpenMembers checks a member-list token as Open checks a history token.
func (r *Reports) OpenMembers(token string) (MembersReport, error) {
	parts, err := r.verify(token, membersTokenVersion)
	if err != nil {
		return MembersReport{}, err
	}
	id, err1 := strconv.ParseInt(parts[1], 10, 64)
	slug, err2 := hex.DecodeString(parts[2])
	if err1 != nil || err2 != nil || id <= 0 || !domain.ValidSlug(string(slug)) {
		return MembersReport{}, domain.Forbiddenf("the report link is not valid; ask for a new one")
	}
	return MembersReport{SegmentID: id, Slug: string(slug)}, nil
}

// WriteMembersCSV streams the member list m to w: a header line
// user_id;added_at;expires_at;source, then one line per active member in
// user id order, times in RFC 3339 UTC, a permanent membership's
// expires_at empty. It returns domain.ErrNotFound if the segment is gone.
//
// It returns domain.ErrBusy, having written nothing, if as many exports as
// allowed are running.
func (r *Reports) WriteMembersCSV(ctx context.Context, m MembersReport, w io.Writer) error {
	return r.export(func() error { return r.store.CopyMembersCSV(ctx, m.SegmentID, w) })
}

// CheckMembers says what WriteMembersCSV would answer without exporting
// anything: nil, or domain.ErrNotFound if the segment is gone.
func (r *Reports) CheckMembers(ctx context.Context, m MembersReport) error {
	found, err := r.store.SegmentExists(ctx, m.SegmentID)
	if err == nil && !found {
		err = domain.NotFoundf("the segment no longer exists; its member list is gone with it")
	}
	return err
}

// verify checks a token's signature, kind (version) and expiry, and
// returns its payload's four dot-separated parts.
func (r *Reports) verify(token, version string) ([]string, error) {
	bad := domain.Forbiddenf("the report link is not valid; ask for a new one")
	payload, sig, ok := strings.Cut(token, ".")
	if !ok || !hmac.Equal([]byte(sig), []byte(r.sign(payload))) {
		return nil, bad
	}
	raw, err := b64.Strict().DecodeString(payload)
	if err != nil {
		return nil, bad
	}
	parts := strings.Split(string(raw), ".")
	if len(parts) != 4 || parts[0] != version {
		return nil, bad
	}
	exp, err := strconv.ParseInt(parts[3], 10, 64)
	if err != nil {
		return nil, bad
	}
	if !r.now().Before(time.Unix(exp, 0)) {
		return nil, domain.Forbiddenf("the report link expired at %s; ask for a new one", time.Unix(exp, 0).UTC().Format(time.RFC3339))
	}
	return parts, nil
}

// Open checks a token and returns the report it names. A token that is
// malformed, tampered with, signed under another secret or expired gives
// domain.ErrForbidden.
func (r *Reports) Open(token string) (domain.HistoryQuery, error) {
	parts, err := r.verify(token, tokenVersion)
	if err != nil {
		return domain.HistoryQuery{}, err
	}
	period, err1 := domain.ParsePeriod(parts[1])
	userID, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || userID < 0 {
		return domain.HistoryQuery{}, domain.Forbiddenf("the report link is not valid; ask for a new one")
	}
	return domain.HistoryQuery{Period: period, UserID: userID}, nil
}

// WriteCSV streams the report of q to w: a header line
// user_id;segment;operation;datetime;reason, then one line per event in
// time order, times in RFC 3339 UTC. It returns domain.ErrBusy, having
// written nothing (and counted no download), if as many exports as
// allowed are running.
func (r *Reports) WriteCSV(ctx context.Context, q domain.HistoryQuery, w io.Writer) error {
	return r.export(func() error {
		err := r.store.CopyHistoryCSV(ctx, q, w)
		r.rec.ReportDownloaded(q.UserID == 0, err == nil)
		return err
	})
}

// UserHistory returns up to limit events of the user in [from, to) after
// the cursor, and the cursor of the next page if there is one.
func (r *Reports) UserHistory(ctx context.Context, userID int64, from, to time.Time, after domain.HistoryCursor, limit int) (HistoryPage, error) {
	events, err := r.store.UserHistory(ctx, userID, from, to, after, limit+1)
	if err != nil {
		return HistoryPage{}, err
	}
	page := HistoryPage{}
	if last := cutPage(&events, limit); last != nil {
		page.Next = &domain.HistoryCursor{At: last.At, ID: last.ID}
	}
	page.Events = events
	return page, nil
}
