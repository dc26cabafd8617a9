-- seat_snapshot: every seat's status of a flight, and the position in its seat stream that
-- the statuses are true at, read in one atomic step (a client of the stream starts from it).
--
-- KEYS[1]   {f:<flight>}:e   the flight's marker (hold_seats.lua): until the flight's booked
--                            seats are restored into this process, a free-looking seat may
--                            be sold, so no snapshot is given
-- KEYS[2]   {f:<flight>}:s   the flight's seat stream (_stream.lua)
-- ARGV[1]   the run id of this Redis process, as the client read it when it connected
-- ARGV[2]   number of rows of the flight (seats are <row><letter>, rows from 1)
-- ARGV[3]   the seat letters of a row, in order across the cabin (e.g. ABCDEF)
--
-- Seat keys are derived from KEYS[1]'s hash tag (the same slot). It writes nothing, so a
-- script Redis Cluster refuses part-way has changed nothing.
--
-- Returns (closed set):
--   {1, position, statuses}  position: the stream's last entry id ("0-0" while it has none);
--                            statuses: one byte a seat in row-major order, "a" available,
--                            "h" held, "b" booked
--   {3}                      the flight is not restored into this process (yet)
local rcall = redis.call
if rcall('GET', KEYS[1]) ~= ARGV[1] then return {3} end
local prefix = string.sub(KEYS[1], 1, -2)
local rows = tonumber(ARGV[2])
local letters = ARGV[3]
local width = #letters
local last = rcall('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local position = '0-0'
if #last > 0 then position = last[1][1] end
local out = {}
-- A row a time: one MGET of its seats, far fewer calls than a GET a seat.
for r = 1, rows do
  local names = {}
  for c = 1, width do names[c] = prefix .. r .. string.sub(letters, c, c) end
  local values = rcall('MGET', unpack(names))
  for c = 1, width do
    local v = values[c]
    if not v then
      out[#out + 1] = 'a'
    elseif string.sub(v, 1, 1) == '!' then
      out[#out + 1] = 'b'
    else
      out[#out + 1] = 'h'
    end
  end
end
return {1, position, table.concat(out)}
