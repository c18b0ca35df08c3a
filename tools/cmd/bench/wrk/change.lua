-- POST /api/v1/users/{id}/segments: add two segments and remove a third,
-- all distinct, from SEG_1..SEG_20, for random seeded users 1..100000.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(seed * 7919 + os.time())
end

local headers = { ["Content-Type"] = "application/json" }

function request()
  local a = math.random(0, 19)
  local b = (a + math.random(1, 9)) % 20
  local c = (a + math.random(10, 19)) % 20
  local body = string.format('{"add":["SEG_%d","SEG_%d"],"remove":["SEG_%d"]}', a + 1, b + 1, c + 1)
  return wrk.format("POST", "/api/v1/users/" .. math.random(1, 100000) .. "/segments", headers, body)
end
