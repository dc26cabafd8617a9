-- hold_seats: hold every listed seat for one booking, or none of them, and write the booking's
-- record beside its seats; with an Idempotency-Key, claim the key and keep the answer under it.
--
-- KEYS[1]        {f:<flight>}:d        deadline index (sorted set: booking id -> deadline, ms)
-- KEYS[2]        {f:<flight>}:e        the flight's marker: the run id of the Redis process its
--                                      booked seats were restored into (missing: Redis lost its
--                                      data; another run id: Redis restarted, from an AOF that
--                                      may miss its last second; either way not restored yet)
-- KEYS[3]        {f:<flight>}:b        the flight's records (hash: booking id -> record)
-- KEYS[4]        {f:<flight>}:k:<key>  the Idempotency-Key's entry (hash); unused without a key
-- KEYS[5..8]     {f:<flight>}:m, :r, :c, :l   the flight's free-seat index (_hold.lua)
-- KEYS[9]        {f:<flight>}:s        the flight's seat stream (_stream.lua)
-- KEYS[10]       {f:<flight>}:u        seats per customer (_hold.lua)
-- KEYS[11..n+10] {f:<flight>}:<seat>   the seats to hold
-- ARGV[1]        booking id, stored as each held seat's value
-- ARGV[2]        hold time, milliseconds (integer > 0)
-- ARGV[3]        who (_hold.lua) ARGV[4] amount       ARGV[5] currency
-- ARGV[6]        the request's fingerprint, or "" for a request without a key
-- ARGV[7]        how long the key's entry is kept, milliseconds
-- ARGV[8]        the run id of this Redis process, as the client read it when it connected
-- ARGV[9]        the seat stream's length (_stream.lua; 0: no stream)
-- ARGV[10]       the most seats one customer (who) may hold or have booked on the flight
--                (0: no limit)
--
-- Returns (closed set):
--   {1, deadline_ms, created_ms}  every seat held until deadline_ms (Redis clock)
--   {2, i, j, ...}                nothing held: the seats at 1-based positions i, j, ... of
--                                 KEYS[11..] are held or booked by someone else
--   {3}                           nothing held: the flight's marker is missing or from another
--                                 run; a free-looking seat may be sold in SQL, so nothing is
--                                 held until the flight is restored into this process
--   {4, <entry>...}               the key's first answer (_hold.lua's replay()); nothing
--                                 changed
--   {5}                           the key was used with a different request: nothing changed
--   {6, held}                     nothing held: the customer holds or has booked `held`
--                                 seats of the flight, and these would pass the limit
--
-- Every key is declared and every read comes before the first write, so a script that Redis
-- Cluster refuses part-way (a slot being migrated) has changed nothing. Each seat is SET NX
-- with PXAT: the deadline comes from this script's own clock, so the seat keys' expiry and
-- the index's score are the same millisecond.
local rcall = redis.call
local keyed = ARGV[6] ~= ''

if keyed then
  local first = replay(KEYS[4], ARGV[6])
  if first then return first end
end
if rcall('GET', KEYS[2]) ~= ARGV[8] then return {3} end

local taken = {2}
local names = {}
for i = 11, #KEYS do
  if rcall('EXISTS', KEYS[i]) == 1 then
    taken[#taken + 1] = i - 10
    names[#names + 1] = string.sub(KEYS[i], #KEYS[1])
  end
end
if #taken > 1 then
  if keyed then remember_refusal(KEYS[4], ARGV[6], ARGV[7], 't', table.concat(names, ',')) end
  return taken
end

local limit = tonumber(ARGV[10])
if limit > 0 then
  local held = tonumber(rcall('HGET', KEYS[10], ARGV[3]) or '0')
  if held + #KEYS - 10 > limit then return {6, held} end
end

local now = now_ms()
local deadline = string.format('%d', now + tonumber(ARGV[2]))
local seats = {}
for i = 11, #KEYS do
  rcall('SET', KEYS[i], ARGV[1], 'NX', 'PXAT', deadline)
  seats[#seats + 1] = string.sub(KEYS[i], #KEYS[1])
end
rcall('ZADD', KEYS[1], deadline, ARGV[1])
index_mark(KEYS[5], KEYS[6], KEYS[7], KEYS[8], seats, 1)
announce(KEYS[9], tonumber(ARGV[9]), seats, 'h')
if limit > 0 then customer_add(KEYS[10], ARGV[3], #seats) end
write_record(KEYS[3], ARGV[1], table.concat(seats, ','), deadline, now)
if keyed then remember_hold(KEYS[4], ARGV[6], ARGV[7], ARGV[1], table.concat(seats, ','), deadline, now) end
return {1, tonumber(deadline), now}
