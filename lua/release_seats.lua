-- release_seats: free the seats a booking holds or booked, and only those.
--
-- KEYS[1]        {f:<flight>}:d      deadline index (sorted set: booking id -> deadline, Unix ms)
-- KEYS[2..n+1]   {f:<flight>}:<seat> every seat of the booking
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
for i = 2, #KEYS do
  local v = rcall('GET', KEYS[i])
  if v == bid or v == booked then
    rcall('DEL', KEYS[i])
    freed = freed + 1
  end
end
rcall('ZREM', KEYS[1], bid)
return freed
