-- hold_seats: hold every listed seat for one booking, or none of them.
--
-- KEYS[1]        {f:<flight>}:d      deadline index (sorted set: booking id -> deadline, Unix ms)
-- KEYS[2]        {f:<flight>}:e      the flight's marker: present once its booked seats are in
--                                    this Redis (missing: Redis lost its data, not restored yet)
-- KEYS[3..n+2]   {f:<flight>}:<seat> the seats to hold
-- ARGV[1]        booking id, stored as each held seat's value
-- ARGV[2]        hold time, milliseconds (integer > 0)
--
-- Returns (closed set):
--   {1, deadline_ms}      every seat held until deadline_ms (Redis clock)
--   {2, i, j, ...}        nothing held: the seats at 1-based positions i, j, ... of KEYS[3..]
--                         are held or booked by someone else
--   {3}                   nothing held: the flight's marker is missing; a free-looking seat
--                         may be sold in SQL, so no seat is held until the flight is restored
--
-- Each seat is SET NX with PXAT rather than EX: the deadline comes from this script's own TIME,
-- so the seat keys' expiry and the index's score are the same millisecond.
local rcall = redis.call

if rcall('EXISTS', KEYS[2]) == 0 then return {3} end

local taken = {2}
for i = 3, #KEYS do
  if rcall('EXISTS', KEYS[i]) == 1 then taken[#taken + 1] = i - 2 end
end
if #taken > 1 then return taken end

local deadline = string.format('%d', now_ms() + tonumber(ARGV[2]))
for i = 3, #KEYS do
  rcall('SET', KEYS[i], ARGV[1], 'NX', 'PXAT', deadline)
end
rcall('ZADD', KEYS[1], deadline, ARGV[1])
return {1, tonumber(deadline)}
