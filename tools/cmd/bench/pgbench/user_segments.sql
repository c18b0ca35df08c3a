-- The exact query of GET /api/v1/users/{id}/segments (postgres.UserRepo.UserSegments,
-- userSegmentsSQL) over the seeded users 1..100000.
\set uid random(1, 100000)
SELECT s.slug, m.added_at, m.expires_at, m.source
FROM users u
LEFT JOIN (memberships m JOIN segments s ON s.id = m.segment_id)
       ON m.user_id = u.id AND (m.expires_at IS NULL OR m.expires_at > now())
WHERE u.id = :uid
ORDER BY s.slug;
