-- POST /api/v1/users/{id}/segments: add two segments and remove a third,
-- all distinct, from SEG_1..SEG_20, for random seeded users 1..N, where N
-- is the first script argument (wrk ... -s change.lua URL -- N), 100000 by
-- default.
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

local headers = { ["Content-Type"] = "application/json" }

function request()
  local a = math.random(0, 19)
  local b = (a + math.random(1, 9)) % 20
  local c = (a + math.random(10, 19)) % 20
  local body = string.format('{"add":["SEG_%d","SEG_%d"],"remove":["SEG_%d"]}', a + 1, b + 1, c + 1)
  return wrk.format("POST", "/api/v1/users/" .. math.random(1, users) .. "/segments", headers, body)
end
