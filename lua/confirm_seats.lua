-- confirm_seats: turn a booking's held seats into booked seats, if the hold is still its own.
--
-- KEYS[1]        {f:<flight>}:d        deadline index (sorted set: booking id -> deadline, ms)
-- KEYS[2]        {f:<flight>}:b        the flight's records: the booking's is deleted with the
--                                      hold (the booking is in SQL, PAYMENT_PENDING, before
--                                      any confirm)
-- KEYS[3]        {f:<flight>}:s        the flight's seat stream (_stream.lua)
-- KEYS[4..n+3]   {f:<flight>}:<seat>   every seat of the booking
-- ARGV[1]        booking id
-- ARGV[2]        the seat stream's length (_stream.lua; 0: no stream)
--
-- A booked seat's value is "!" .. booking id and it has no TTL, so expiry can never free it.
--
-- Returns (closed set):
--   1   booked now
--   2   already booked by this booking (a retry): nothing changed
--   0   the hold is lost (a seat expired, was released or belongs to another booking):
--       nothing changed
local rcall = redis.call
local bid = ARGV[1]
local booked = '!' .. bid

local held = 0
for i = 4, #KEYS do
  local v = rcall('GET', KEYS[i])
  if v == bid then
    held = held + 1
  elseif v ~= booked then
    return 0
  end
end
if held == 0 then
  rcall('HDEL', KEYS[2], bid, 'x:' .. bid)
  return 2
end

local names = {}
for i = 4, #KEYS do
  rcall('SET', KEYS[i], booked)
  names[#names + 1] = string.sub(KEYS[i], #KEYS[1])
end
announce(KEYS[3], tonumber(ARGV[2]), names, 'b')
rcall('ZREM', KEYS[1], bid)
rcall('HDEL', KEYS[2], bid, 'x:' .. bid)
return 1
