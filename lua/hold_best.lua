-- hold_best: pick and hold N free seats of a flight for one booking, side by side when it can,
-- and write the booking's record beside them; with an Idempotency-Key, claim the key and keep
-- the answer under it.
--
-- KEYS[1]   {f:<flight>}:d        deadline index (sorted set: booking id -> deadline, ms)
-- KEYS[2]   {f:<flight>}:e        the flight's marker: the run id of the Redis process its
--                                 booked seats were restored into (hold_seats.lua)
-- KEYS[3]   {f:<flight>}:b        the flight's records (hash: booking id -> record)
-- KEYS[4]   {f:<flight>}:k:<key>  the Idempotency-Key's entry (hash); unused without a key
-- KEYS[5..8] {f:<flight>}:m, :r, :c, :l  the flight's free-seat index (_hold.lua)
-- KEYS[9]   {f:<flight>}:s        the flight's seat stream (_stream.lua)
-- KEYS[10]  {f:<flight>}:u        seats per customer (_hold.lua)
-- ARGV[1]   booking id, stored as each held seat's value
-- ARGV[2]   hold time, milliseconds (integer > 0)
-- ARGV[3]   who (_hold.lua) ARGV[4] amount       ARGV[5] currency
-- ARGV[6]   the request's fingerprint, or "" for a request without a key
-- ARGV[7]   how long the key's entry is kept, milliseconds
-- ARGV[8]   the run id of this Redis process, as the client read it when it connected
-- ARGV[9]   number of seats wanted (integer >= 1)
-- ARGV[10]  number of rows of the flight (seats are <row><letter>, rows from 1)
-- ARGV[11]  the seat letters of a row, in order across the cabin (e.g. ABCDEF)
-- ARGV[12]  the seat stream's length (_stream.lua; 0: no stream)
-- ARGV[13]  the most seats one customer (who) may hold or have booked on the flight (0: none)
--
-- With the index, the work does not grow with the flight's size or fill: a string.find over
-- the per-row bytes (in C) finds the first row that fits, one BITFIELD reads its seats, and
-- only the chosen seats are checked (EXISTS). A seat the index calls free but that is taken
-- (it cannot happen the other way round) is marked taken and the choice is made again.
-- Without an index (a flight not indexed yet), every seat is checked, as before.
--
-- Seat keys are derived from KEYS[1]'s hash tag ({f:<flight>}:<seat>, the same slot): listing
-- every seat of the flight as KEYS would cost the client more than the hold itself. Every
-- undeclared seat key is read (EXISTS) before the first write to one, and the only writes
-- before that are to the declared index keys, so a script that Redis Cluster refuses
-- part-way (an undeclared key of a slot being migrated) has changed nothing but the index's
-- own correction of a seat it already knew to be taken.
--
-- Preference: N adjacent free seats in one row; else N free seats in one row; else the first
-- N free seats of the cabin.
--
-- Returns (closed set):
--   {1, deadline_ms, created_ms, seat, seat, ...}  these seats are held until deadline_ms
--   {2, free}                           nothing held: only `free` seats are free
--   {3}                                 nothing held: the flight's marker is missing or from
--                                       another run (not restored into this process)
--   {4, <entry>...}                     the key's first answer (_hold.lua's replay())
--   {5}                                 the key was used with a different request
--   {6, held}                           nothing held: the customer has `held` seats of the
--                                       flight, and these would pass the limit
local rcall = redis.call
local keyed = ARGV[6] ~= ''
if keyed then
  local first = replay(KEYS[4], ARGV[6])
  if first then return first end
end
if rcall('GET', KEYS[2]) ~= ARGV[8] then return {3} end
local prefix = string.sub(KEYS[1], 1, -2)
local want = tonumber(ARGV[9])
local rows = tonumber(ARGV[10])
local letters = ARGV[11]
local width = #letters
local M, R, C = KEYS[5], KEYS[6], KEYS[7]
local limit = tonumber(ARGV[13])
if limit > 0 then
  local held = tonumber(rcall('HGET', KEYS[10], ARGV[3]) or '0')
  if held + want > limit then return {6, held} end
end

-- The old way: every seat checked, row by row. O(seats); used without an index.
local function scan()
  local chosen, same_row, anywhere = nil, nil, {}
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
    if #anywhere < want then return nil, #anywhere end
    chosen = anywhere
  end
  return chosen, nil
end

-- The index's choice, in the same order of preference; nil, free when too few seats. Also
-- what it read, for marking the choice: each chosen row's free columns, and the rows'
-- longest-run and free-count bytes.
local function pick()
  local names, seen = {}, {}
  local fit = '[' .. string.char(math.min(want, 255)) .. '-\255]'
  local runs = rcall('GET', R) or ''
  local row = string.find(runs, fit)
  if row then
    local cols = free_cols(M, row, width)
    local run = 0
    for i = 1, #cols do
      if i > 1 and cols[i] == cols[i - 1] + 1 then run = run + 1 else run = 1 end
      if run == want then
        for k = i - want + 1, i do
          names[#names + 1] = row .. string.sub(letters, cols[k] + 1, cols[k] + 1)
        end
        seen[row] = cols
        return names, nil, seen, runs, nil
      end
    end
  end
  local counts = rcall('GET', C) or ''
  row = string.find(counts, fit)
  if row then
    local cols = free_cols(M, row, width)
    for k = 1, want do
      names[#names + 1] = row .. string.sub(letters, cols[k] + 1, cols[k] + 1)
    end
    seen[row] = cols
    return names, nil, seen, runs, counts
  end
  -- The first rows with free seats until they have enough, then one BITFIELD for them all.
  local found, total, at = {}, 0, 1
  while total < want do
    row = string.find(counts, '[\1-\255]', at)
    if not row then break end
    found[#found + 1] = row
    total = total + string.byte(counts, row)
    at = row + 1
  end
  if total < want then return nil, total end
  local ops = {}
  for _, r in ipairs(found) do
    ops[#ops + 1] = 'GET'; ops[#ops + 1] = 'u' .. width; ops[#ops + 1] = (r - 1) * width
  end
  local values = rcall('BITFIELD', M, unpack(ops))
  for i, r in ipairs(found) do
    local cols = cols_of(values[i], width)
    seen[r] = cols
    for _, col in ipairs(cols) do
      if #names < want then names[#names + 1] = r .. string.sub(letters, col + 1, col + 1) end
    end
  end
  if #names < want then return nil, #names end
  return names, nil, seen, runs, counts
end

-- Mark the chosen seats taken in the index from what pick() read: one BITFIELD for every
-- seat, and each touched row's new bytes from its free columns as read, so a choice spread
-- over rows costs no more Redis calls than one in a single row.
local function mark_chosen(chosen, seen, runs, counts)
  local ops, taken = {}, {}
  for _, name in ipairs(chosen) do
    local row, offset = seat_bit(name, letters, width, rows)
    ops[#ops + 1] = 'SET'; ops[#ops + 1] = 'u1'; ops[#ops + 1] = offset; ops[#ops + 1] = 1
    taken[offset] = true
  end
  rcall('BITFIELD', M, unpack(ops))
  local touched = 0
  for _ in pairs(seen) do touched = touched + 1 end
  local new_runs, new_counts = runs, counts
  for row, cols in pairs(seen) do
    local best, run, free, last = 0, 0, 0, -2
    for _, col in ipairs(cols) do
      if not taken[(row - 1) * width + col] then
        if col == last + 1 then run = run + 1 else run = 1 end
        if run > best then best = run end
        free = free + 1
        last = col
      end
    end
    if touched == 1 or not counts then
      rcall('SETRANGE', R, row - 1, string.char(best))
      rcall('SETRANGE', C, row - 1, string.char(free))
    else
      new_runs = string.sub(new_runs, 1, row - 1) .. string.char(best) .. string.sub(new_runs, row + 1)
      new_counts = string.sub(new_counts, 1, row - 1) .. string.char(free)
        .. string.sub(new_counts, row + 1)
    end
  end
  if touched > 1 and counts then
    rcall('SET', R, new_runs)
    rcall('SET', C, new_counts)
  end
end

local chosen, free, seen, runs, counts = nil, nil, nil, nil, nil
local rows_l, letters_l = layout(KEYS[8])
-- An index for another layout than the request's is not this flight's: scan instead.
local indexed = rows_l == rows and letters_l == letters
if indexed then
  ensure_index(M, R, C, rows, width)
  for _ = 1, 32 do
    chosen, free, seen, runs, counts = pick()
    if not chosen then break end
    local keys = {}
    for i, name in ipairs(chosen) do keys[i] = prefix .. name end
    if rcall('EXISTS', unpack(keys)) == 0 then break end
    local stale = {}
    for _, name in ipairs(chosen) do
      if rcall('EXISTS', prefix .. name) == 1 then stale[#stale + 1] = name end
    end
    index_mark(M, R, C, KEYS[8], stale, 1)
    chosen = nil
  end
  -- An index this far off (it should never be) is not trusted: check every seat.
  if not chosen and not free then
    chosen, free = scan()
    indexed = false
  end
else
  chosen, free = scan()
end
if not chosen then
  if keyed then remember_refusal(KEYS[4], ARGV[6], ARGV[7], 'n', free) end
  return {2, free}
end

local now = now_ms()
local deadline = string.format('%d', now + tonumber(ARGV[2]))
local result = {1, tonumber(deadline), now}
for _, name in ipairs(chosen) do
  rcall('SET', prefix .. name, ARGV[1], 'NX', 'PXAT', deadline)
  result[#result + 1] = name
end
rcall('ZADD', KEYS[1], deadline, ARGV[1])
if indexed then mark_chosen(chosen, seen, runs, counts) else index_mark(M, R, C, KEYS[8], chosen, 1) end
announce(KEYS[9], tonumber(ARGV[12]), chosen, 'h')
if limit > 0 then customer_add(KEYS[10], ARGV[3], #chosen) end
local seats = table.concat(chosen, ',')
write_record(KEYS[3], ARGV[1], seats, deadline, now)
if keyed then remember_hold(KEYS[4], ARGV[6], ARGV[7], ARGV[1], seats, deadline, now) end
return result
