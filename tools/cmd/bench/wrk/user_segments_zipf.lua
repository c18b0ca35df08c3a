-- GET /api/v1/users/{id}/segments over seeded users 1..N drawn from a Zipf
-- distribution of exponent s: user k with probability proportional to
-- k^-s, so that user 1 is read most. N and s are the script's arguments
-- (wrk ... -s user_segments_zipf.lua URL -- N [s]), 100000 and 1.1 by
-- default, as pgbench/user_segments_zipf.sql's random_zipfian(1, N, 1.1)
-- and loadgen.UserSegmentsZipf draw.
--
-- The sampler is Go's math/rand Zipf (rejection-inversion, W. Hörmann and
-- G. Derflinger, "Rejection-Inversion to Generate Variates from Monotone
-- Discrete Distributions", 1996) with v = 1 and imax = N - 1: it draws k in
-- 0..N-1 with probability proportional to (1 + k)^-s, user k + 1.
local counter = 0
local users, s = 100000, 1.1
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

local exp, log, floor, random = math.exp, math.log, math.floor, math.random
local oneminuss, oneminussinv, hxm, hx0minushxm, squeeze

-- h is the integral of (1 + x)^-s (up to a constant), hinv its inverse.
local function h(x) return exp(oneminuss * log(1 + x)) * oneminussinv end
local function hinv(x) return exp(oneminussinv * log(oneminuss * x)) - 1 end

function init(args)
  users = tonumber(args[1]) or users
  s = tonumber(args[2]) or s
  math.randomseed(seed * 7919 + os.time())
  oneminuss = 1 - s
  oneminussinv = 1 / oneminuss
  hxm = h(users - 1 + 0.5)
  hx0minushxm = h(0.5) - 1 - hxm
  squeeze = 1 - hinv(h(1.5) - exp(-s * log(2)))
end

-- zipf returns k in 0..users-1 with probability proportional to (1 + k)^-s.
local function zipf()
  while true do
    local ur = hxm + random() * hx0minushxm
    local x = hinv(ur)
    local k = floor(x + 0.5)
    if k - x <= squeeze or ur >= h(k + 0.5) - exp(-log(k + 1) * s) then
      return k
    end
  end
end

function request()
  return wrk.format("GET", string.format("/api/v1/users/%d/segments", zipf() + 1))
end
