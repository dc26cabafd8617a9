-- due_holds: the holds of a flight whose deadline has passed, oldest first.
--
-- KEYS[1]   {f:<flight>}:d   deadline index (sorted set: booking id -> deadline, Unix ms)
-- ARGV[1]   at most this many booking ids (integer >= 1)
--
-- Nothing is removed here: the caller records EXPIRED in SQL first and then ZREMs what it
-- recorded, so a crash in between repeats the work instead of losing it. The bound is strict
-- (score < now) because Redis only counts a key expired once now > its PXAT deadline.
--
-- Returns (closed set):
--   {booking id, ...}   possibly empty
local now = now_ms()
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now),
  'LIMIT', 0, tonumber(ARGV[1]))
