-- The query of GET /api/v1/users/{id}/segments for one user
-- (postgres.UserRepo.UserSegments, userSegmentsSQL; the service sends a
-- batch of misses as usersSegmentsSQL, the same for many users at once),
-- over the seeded users 1..N drawn uniformly. Run with -D users=N.
\set uid random(1, :users)
SELECT u.id, m.segment_id, s.slug, m.added_at, m.expires_at, m.source
FROM users u
LEFT JOIN (memberships m JOIN segments s ON s.id = m.segment_id)
       ON m.user_id = u.id AND (m.expires_at IS NULL OR m.expires_at > now())
WHERE u.id = :uid
ORDER BY s.slug;
