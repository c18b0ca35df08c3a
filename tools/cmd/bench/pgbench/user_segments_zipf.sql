-- The query of GET /api/v1/users/{id}/segments for one user, as in
-- user_segments.sql, over the seeded users 1..N drawn from a Zipf
-- distribution of exponent 1.1: user k with probability proportional to
-- k^-1.1, so that user 1 is read most (wrk/user_segments_zipf.lua and
-- loadgen.UserSegmentsZipf draw the same). Run with -D users=N.
\set uid random_zipfian(1, :users, 1.1)
SELECT u.id, m.segment_id, s.slug, m.added_at, m.expires_at, m.source
FROM users u
LEFT JOIN (memberships m JOIN segments s ON s.id = m.segment_id)
       ON m.user_id = u.id AND (m.expires_at IS NULL OR m.expires_at > now())
WHERE u.id = :uid
ORDER BY s.slug;
