-- The exact call of POST /api/v1/users/{id}/segments (postgres.UserRepo.ChangeUserSegments)
-- for an add-2/remove-1 change of three distinct seeded segments SEG_1..SEG_20.
\set uid random(1, 100000)
\set a random(0, 19)
\set b (:a + random(1, 9)) % 20
\set c (:a + random(10, 19)) % 20
SELECT change, slug, added_at, expires_at, source
FROM change_user_segments(:uid, ARRAY['SEG_' || (:a + 1), 'SEG_' || (:b + 1)], ARRAY['SEG_' || (:c + 1)], NULL);
