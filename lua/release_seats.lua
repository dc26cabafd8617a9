-- release_seats: free the seats a booking holds or booked, and only those.
--
-- KEYS[1]        {f:<flight>}:d        deadline index (sorted set: booking id -> deadline, ms)
-- KEYS[2]        {f:<flight>}:b        the flight's records: the booking's is deleted too;
--                                      callers release only once the booking's outcome is in
--                                      SQL, or for a hold that never answered
-- KEYS[3..6]     {f:<flight>}:m, :r, :c, :l   the flight's free-seat index (_hold.lua)
-- KEYS[7]        {f:<flight>}:s        the flight's seat stream (_stream.lua)
-- KEYS[8]        {f:<flight>}:u        seats per customer (_hold.lua): a held booking's seats
--                                      come off when its record goes, a confirmed one's as
--                                      its booked seats go, so each seat comes off once
-- KEYS[9..n+8]   {f:<flight>}:<seat>   every seat of the booking
-- ARGV[1]        booking id
-- ARGV[2]        the seat stream's length (_stream.lua; 0: no stream)
-- ARGV[3]        who made the booking (_hold.lua; for a confirmed one, which has no record)
--
-- A seat whose value is another booking's is left alone: after an expiry, someone else may hold
-- it already.
--
-- Returns (closed set):
--   n >= 0   the number of seats freed (0 when the booking held none any more)
local rcall = redis.call
local bid = ARGV[1]
local booked = '!' .. bid

local freed, unbooked = 0, 0
local names = {}
for i = 9, #KEYS do
  local v = rcall('GET', KEYS[i])
  if v == bid or v == booked then
    rcall('DEL', KEYS[i])
    freed = freed + 1
    if v == booked then unbooked = unbooked + 1 end
    names[#names + 1] = string.sub(KEYS[i], #KEYS[1])
  end
end
local who, n = record_who(rcall('HGET', KEYS[2], bid))
if who then
  customer_add(KEYS[8], who, -n)
elseif unbooked > 0 and ARGV[3] ~= '' then
  customer_add(KEYS[8], ARGV[3], -unbooked)
end
rcall('ZREM', KEYS[1], bid)
rcall('HDEL', KEYS[2], bid, 'x:' .. bid)
index_mark(KEYS[3], KEYS[4], KEYS[5], KEYS[6], names, 0)
announce(KEYS[7], tonumber(ARGV[2]), names, 'a')
return freed
