-- GET /api/v1/users/{id}/segments over random seeded users 1..100000.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(seed * 7919 + os.time())
end

function request()
  return wrk.format("GET", "/api/v1/users/" .. math.random(1, 100000) .. "/segments")
end
