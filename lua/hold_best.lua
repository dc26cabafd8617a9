-- hold_best: pick and hold N free seats of a flight for one booking, side by side when it can,
-- and write the booking's record beside them; with an Idempotency-Key, claim the key and keep
-- the answer under it.
--
-- KEYS[1]   {f:<flight>}:d        deadline index (sorted set: booking id -> deadline, ms)
-- KEYS[2]   {f:<flight>}:e        the flight's marker: present once its booked seats are in
--                                 this Redis (missing: Redis lost its data, not restored yet)
-- KEYS[3]   {f:<flight>}:b:<id>   the booking's record (hash), written with the seats
-- KEYS[4]   {f:<flight>}:k:<key>  the Idempotency-Key's entry (hash); unused without a key
-- ARGV[1]   booking id, stored as each held seat's value
-- ARGV[2]   hold time, milliseconds (integer > 0)
-- ARGV[3]   user id       ARGV[4] amount       ARGV[5] currency
-- ARGV[6]   the request's fingerprint, or "" for a request without a key
-- ARGV[7]   how long the key's entry is kept, milliseconds
-- ARGV[8]   number of seats wanted (integer >= 1)
-- ARGV[9]   number of rows of the flight (seats are <row><letter>, rows from 1)
-- ARGV[10]  the seat letters of a row, in order across the cabin (e.g. ABCDEF)
--
-- Seat keys are derived from KEYS[1]'s hash tag ({f:<flight>}:<seat>, the same slot): listing
-- every seat of the flight as KEYS would cost the client more than the hold itself. Every seat
-- key is read (EXISTS) before the first write, so a script that Redis Cluster refuses part-way
-- (a key of a slot being migrated) is refused before it changed anything.
--
-- Preference: N adjacent free seats in one row; else N free seats in one row; else the first
-- N free seats of the cabin.
--
-- Returns (closed set):
--   {1, deadline_ms, created_ms, seat, seat, ...}  these seats are held until deadline_ms
--   {2, free}                           nothing held: only `free` seats are free
--   {3}                                 nothing held: the flight's marker is missing
--   {4, <entry>...}                     the key's first answer (_hold.lua's replay())
--   {5}                                 the key was used with a different request
local rcall = redis.call
local keyed = ARGV[6] ~= ''
if keyed then
  local first = replay(KEYS[4], ARGV[6])
  if first then return first end
end
if rcall('EXISTS', KEYS[2]) == 0 then return {3} end
local prefix = string.sub(KEYS[1], 1, -2)
local want = tonumber(ARGV[8])
local rows = tonumber(ARGV[9])
local letters = ARGV[10]
local width = #letters

local chosen = nil
local same_row = nil
local anywhere = {}

for r = 1, rows do
  local free_in_row = {}
  local run = 0
  for c = 1, width do
    local name = r .. string.sub(letters, c, c)
    if rcall('EXISTS', prefix .. name) == 0 then
      free_in_row[#free_in_row + 1] = name
      if #anywhere < want then anywhere[#anywhere + 1] = name end
      run = run + 1
      if run == want then
        chosen = {}
        for k = #free_in_row - want + 1, #free_in_row do chosen[#chosen + 1] = free_in_row[k] end
        break
      end
    else
      run = 0
    end
  end
  if chosen then break end
  if same_row == nil and #free_in_row >= want then
    same_row = {}
    for k = 1, want do same_row[k] = free_in_row[k] end
  end
end

chosen = chosen or same_row
if chosen == nil then
  if #anywhere < want then
    if keyed then remember_refusal(KEYS[4], ARGV[6], ARGV[7], 'n', #anywhere) end
    return {2, #anywhere}
  end
  chosen = anywhere
end

local now = now_ms()
local deadline = string.format('%d', now + tonumber(ARGV[2]))
local result = {1, tonumber(deadline), now}
for _, name in ipairs(chosen) do
  rcall('SET', prefix .. name, ARGV[1], 'NX', 'PXAT', deadline)
  result[#result + 1] = name
end
rcall('ZADD', KEYS[1], deadline, ARGV[1])
local seats = table.concat(chosen, ',')
write_record(KEYS[3], seats, deadline, now)
if keyed then remember_hold(KEYS[4], ARGV[6], ARGV[7], ARGV[1], seats, deadline, now) end
return result
