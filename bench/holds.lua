-- wrk script: POST /api/bookings/ with 1-4 adjacent random seats of a random flight, each
-- from a random customer (the per-customer seat limit is on by default).
-- FLIGHTS, ROWS and LETTERS come from the environment the harness sets.
local flights = tonumber(os.getenv("BENCH_FLIGHTS") or "100")
local rows = tonumber(os.getenv("BENCH_ROWS") or "150")
local letters = os.getenv("BENCH_LETTERS") or "ABCDEFGHIJKL"

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

function init(args)
  math.randomseed(seed)
end

request = function()
  local n = math.random(1, 4)
  local start = math.random(1, #letters - n + 1)
  local row = math.random(1, rows)
  local seats = {}
  for i = 0, n - 1 do
    seats[#seats + 1] = '"' .. row .. string.sub(letters, start + i, start + i) .. '"'
  end
  local body = '{"flight_id":' .. math.random(1, flights) .. ',"user_id":"u' .. math.random(1, 1000000) .. '","seats":['
    .. table.concat(seats, ",") .. ']}'
  return wrk.format("POST", "/api/bookings/", {["Content-Type"] = "application/json"}, body)
end
