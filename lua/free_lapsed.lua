-- free_lapsed: once the expiry of holds is recorded in SQL, drop them from the deadline index,
-- delete their records, and mark free in the free-seat index those of their seats whose keys
-- are gone (their TTL freed them; a seat held again since keeps its bit).
--
-- KEYS[1]        {f:<flight>}:d                deadline index
-- KEYS[2..5]     {f:<flight>}:m, :r, :c, :l    the flight's free-seat index (_hold.lua)
-- KEYS[6]        {f:<flight>}:b                the flight's records
-- KEYS[7]        {f:<flight>}:s                the flight's seat stream (_stream.lua): the
--                                              seats freed are announced here, after their
--                                              expiry is in SQL, never before
-- KEYS[8]        {f:<flight>}:u                seats per customer (_hold.lua): each hold's
--                                              seats come off as its record goes
-- ARGV[1]        k, the number of holds
-- ARGV[2]        the seat stream's length (_stream.lua; 0: no stream)
-- ARGV[3..k+2]   the holds' booking ids
-- ARGV[k+3..]    the holds' seats
--
-- Seat keys are derived from KEYS[1]'s hash tag (the same slot), every one read before the
-- first write to the index.
--
-- Returns (closed set):
--   n >= 0   the number of seats marked free
local rcall = redis.call
local prefix = string.sub(KEYS[1], 1, -2)
local k = tonumber(ARGV[1])
local gone = {}
for i = k + 3, #ARGV do
  if rcall('EXISTS', prefix .. ARGV[i]) == 0 then gone[#gone + 1] = ARGV[i] end
end
if k > 0 then
  local ids, fields = {}, {}
  for i = 1, k do
    ids[i] = ARGV[i + 2]
    fields[#fields + 1] = ids[i]
    fields[#fields + 1] = 'x:' .. ids[i]  -- its extension count (extend_hold.lua)
    local who, n = record_who(rcall('HGET', KEYS[6], ids[i]))
    if who then customer_add(KEYS[8], who, -n) end
  end
  rcall('ZREM', KEYS[1], unpack(ids))
  rcall('HDEL', KEYS[6], unpack(fields))
end
index_mark(KEYS[2], KEYS[3], KEYS[4], KEYS[5], gone, 0)
announce(KEYS[7], tonumber(ARGV[2]), gone, 'a')
return #gone
