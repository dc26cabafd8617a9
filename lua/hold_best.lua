-- hold_best: pick and hold N free seats of a flight for one booking, side by side when it can.
--
-- KEYS[1]   {f:<flight>}:d   deadline index (sorted set: booking id -> deadline, Unix ms)
-- KEYS[2]   {f:<flight>}:e   the flight's marker: present once its booked seats are in this
--                            Redis (missing: Redis lost its data, not restored yet)
-- ARGV[1]   booking id, stored as each held seat's value
-- ARGV[2]   hold time, milliseconds (integer > 0)
-- ARGV[3]   number of seats wanted (integer >= 1)
-- ARGV[4]   number of rows of the flight (seats are <row><letter>, rows from 1)
-- ARGV[5]   the seat letters of a row, in order across the cabin (e.g. ABCDEF)
--
-- Seat keys are derived from KEYS[1]'s hash tag ({f:<flight>}:<seat>, the same slot): listing
-- every seat of the flight as KEYS would cost the client more than the hold itself.
--
-- Preference: N adjacent free seats in one row; else N free seats in one row; else the first
-- N free seats of the cabin.
--
-- Returns (closed set):
--   {1, deadline_ms, seat, seat, ...}   these seats are held until deadline_ms
--   {2, free}                           nothing held: only `free` seats are free
--   {3}                                 nothing held: the flight's marker is missing
local rcall = redis.call
if rcall('EXISTS', KEYS[2]) == 0 then return {3} end
local prefix = string.sub(KEYS[1], 1, -2)
local want = tonumber(ARGV[3])
local rows = tonumber(ARGV[4])
local letters = ARGV[5]
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
  if #anywhere < want then return {2, #anywhere} end
  chosen = anywhere
end

local deadline = string.format('%d', now_ms() + tonumber(ARGV[2]))
local result = {1, tonumber(deadline)}
for _, name in ipairs(chosen) do
  rcall('SET', prefix .. name, ARGV[1], 'NX', 'PXAT', deadline)
  result[#result + 1] = name
end
rcall('ZADD', KEYS[1], deadline, ARGV[1])
return result
