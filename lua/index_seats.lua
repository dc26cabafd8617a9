-- index_seats: build a flight's free-seat index from its seat keys (at a restore, or for a
-- new flight), and record its layout so the scripts keep the index from now on.
--
-- KEYS[1], ...  {f:<flight>}:m, :r, :c, :l (KEYS[1..4]): the flight's free-seat index (_hold.lua)
-- ARGV[1]     number of rows of the flight (seats are <row><letter>, rows from 1)
-- ARGV[2]     the seat letters of a row, in order across the cabin (e.g. ABCDEF)
--
-- Seat keys are derived from KEYS[1]'s hash tag (the same slot), every one read before the
-- first write. O(seats): it runs once a flight per restore, never on a hold.
--
-- Returns (closed set):
--   n >= 0   the number of seats found taken
local rcall = redis.call
local prefix = string.sub(KEYS[1], 1, -2)
local rows = tonumber(ARGV[1])
local letters = ARGV[2]
local width = #letters
local taken = {}
local runs, counts = {}, {}
for r = 1, rows do
  local best, run, free = 0, 0, 0
  for c = 1, width do
    if rcall('EXISTS', prefix .. r .. string.sub(letters, c, c)) == 1 then
      taken[#taken + 1] = (r - 1) * width + c - 1
      run = 0
    else
      free = free + 1
      run = run + 1
      if run > best then best = run end
    end
  end
  runs[r] = string.char(best)
  counts[r] = string.char(free)
end
rcall('DEL', KEYS[1])
for _, offset in ipairs(taken) do rcall('SETBIT', KEYS[1], offset, 1) end
rcall('SET', KEYS[2], table.concat(runs))
rcall('SET', KEYS[3], table.concat(counts))
rcall('SET', KEYS[4], rows .. ':' .. letters)
return #taken
