-- GET /api/v1/users/{id}/segments over seeded users 1..N drawn uniformly,
-- where N is the first script argument (wrk ... -s user_segments.lua URL
-- -- N), 100000 by default. user_segments_zipf.lua draws them skewed.
local counter = 0
local users = 100000
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  users = tonumber(args[1]) or users
  math.randomseed(seed * 7919 + os.time())
end

function request()
  return wrk.format("GET", "/api/v1/users/" .. math.random(1, users) .. "/segments")
end
