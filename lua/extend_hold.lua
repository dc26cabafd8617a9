-- extend_hold: move a held booking's deadline later, its seats, deadline index entry and
-- record together, within the hold's caps; or change nothing.
--
-- KEYS[1]        {f:<flight>}:d        deadline index (sorted set: booking id -> deadline, ms)
-- KEYS[2]        {f:<flight>}:b        the flight's records (_hold.lua): the booking's record
--                                      gets the new deadline; its field "x:<booking id>"
--                                      counts the extensions (deleted with the record)
-- KEYS[3..n+2]   {f:<flight>}:<seat>   every seat of the booking
-- ARGV[1]        booking id
-- ARGV[2]        milliseconds to add to the current deadline (integer > 0)
-- ARGV[3]        the hold's longest life, milliseconds from its creation (--max-hold)
-- ARGV[4]        the most extensions a hold may have (--max-extensions)
--
-- Both caps are checked here, atomically with the extension: a request that would pass
-- either is refused whole, never shortened (pretix's bug #1575 let a hold renew forever).
-- Every key is declared and every read comes before the first write.
--
-- Returns (closed set):
--   {1, deadline_ms, now_ms}   extended: every seat held until deadline_ms (Redis clock)
--   {0}                        not held any more (lapsed, released, paid or taken): nothing
--                              changed
--   {2, max_deadline_ms}       the new deadline would pass the hold's longest life
--   {3, max_deadline_ms, n}    the hold was extended n times already, the most allowed
local rcall = redis.call
local bid = ARGV[1]
local current = rcall('ZSCORE', KEYS[1], bid)
local record = rcall('HGET', KEYS[2], bid)
if not current or not record then return {0} end
for i = 3, #KEYS do
  if rcall('GET', KEYS[i]) ~= bid then return {0} end
end
local now = now_ms()
current = tonumber(current)
if current <= now then return {0} end
local created, _, rest = string.match(record, '^(%d+)\31(%d+)\31(.*)$')
local latest = tonumber(created) + tonumber(ARGV[3])
local count = tonumber(rcall('HGET', KEYS[2], 'x:' .. bid) or '0')
if count >= tonumber(ARGV[4]) then return {3, latest, count} end
local deadline = current + tonumber(ARGV[2])
if deadline > latest then return {2, latest} end
local at = string.format('%d', deadline)
for i = 3, #KEYS do
  rcall('PEXPIREAT', KEYS[i], at)
end
rcall('ZADD', KEYS[1], at, bid)
rcall('HSET', KEYS[2], bid, created .. '\31' .. at .. '\31' .. rest, 'x:' .. bid, count + 1)
return {1, deadline, now}
