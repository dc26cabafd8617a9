-- wrk script: POST /api/bookings/ asking for the best 1-4 seats (seat_count) of a random flight.
-- FLIGHTS, ROWS and LETTERS come from the environment the harness sets.
local flights = tonumber(os.getenv("BENCH_FLIGHTS") or "100")

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

function init(args)
  math.randomseed(seed)
end

request = function()
  local body = '{"flight_id":' .. math.random(1, flights) .. ',"user_id":"u' .. math.random(1, 1000000) .. '","seat_count":'
    .. math.random(1, 4) .. '}'
  return wrk.format("POST", "/api/bookings/", {["Content-Type"] = "application/json"}, body)
end
