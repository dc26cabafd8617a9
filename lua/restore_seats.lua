-- restore_seats: mark seats booked for good, from SQL, in a Redis that lost them.
--
-- KEYS[1]   {f:<flight>}:e   the flight's marker (holds are refused while it is missing)
-- KEYS[2]   {f:<flight>}:s   the flight's seat stream (_stream.lua): every seat written is
--                            announced booked, already booked ones too, so a restore that
--                            Redis Cluster refused part-way and that runs again still says
--                            so of the seats its first run wrote
-- ARGV[1]   "1": set the marker after these seats (the last chunk of a restore); "0": do not
-- ARGV[2]   the run id of this Redis process, stored as the marker's value
-- ARGV[3]   the seat stream's length (_stream.lua; 0: no stream)
-- ARGV[4..] pairs: seat name, booking id (each seat becomes "!" .. booking id, with no TTL,
--           unless it holds another booking's value: SQL was read before this call, and a
--           seat taken since then is not overwritten)
--
-- Seat keys are derived from KEYS[1]'s hash tag ({f:<flight>}:<seat>, the same slot): one
-- command with many arguments costs the client far less than one command per seat. On Redis
-- Cluster a seat key moved away by a slot migration makes Redis refuse the script at that
-- seat, after it may have written earlier ones. That is safe: each write only puts back what
-- SQL says is sold (never over another booking's hold), and the marker, which lets holds in,
-- is written last, so the flight stays closed to holds until a restore runs to its end.
--
-- Returns (closed set):
--   n >= 0   the number of seats written (those skipped belong to another booking now)
local rcall = redis.call
local prefix = string.sub(KEYS[1], 1, -2)
local written = {}
for i = 4, #ARGV - 1, 2 do
  local key = prefix .. ARGV[i]
  local value = rcall('GET', key)
  local booked = '!' .. ARGV[i + 1]
  if not value or value == ARGV[i + 1] or value == booked then
    rcall('SET', key, booked)
    written[#written + 1] = ARGV[i]
  end
end
announce(KEYS[2], tonumber(ARGV[3]), written, 'b')
if ARGV[1] == '1' then rcall('SET', KEYS[1], ARGV[2]) end
return #written
