-- release_seats: free the seats a booking holds or booked, and only those.
--
-- KEYS[1]        {f:<flight>}:d        deadline index (sorted set: booking id -> deadline, ms)
-- KEYS[2]        {f:<flight>}:b:<id>   the booking's record, deleted too: callers release only
--                                      once the booking's outcome is in SQL, or for a hold
--                                      that never answered
-- KEYS[3..n+2]   {f:<flight>}:<seat>   every seat of the booking
-- ARGV[1]        booking id
--
-- A seat whose value is another booking's is left alone: after an expiry, someone else may hold
-- it already.
--
-- Returns (closed set):
--   n >= 0   the number of seats freed (0 when the booking held none any more)
local rcall = redis.call
local bid = ARGV[1]
local booked = '!' .. bid

local freed = 0
for i = 3, #KEYS do
  local v = rcall('GET', KEYS[i])
  if v == bid or v == booked then
    rcall('DEL', KEYS[i])
    freed = freed + 1
  end
end
rcall('ZREM', KEYS[1], bid)
rcall('DEL', KEYS[2])
return freed
