-- _hold: not a script of its own; put in front of every script with _clock.lua. What the two
-- hold scripts share: the booking's record and the Idempotency-Key's entry. Both hold scripts
-- take ARGV[3] who (the user id, or the owning API key's name and the user id joined by \31),
-- ARGV[4] amount, ARGV[5] currency.
--
-- A booking's record is the field <booking id> of the flight's hash {f:<flight>}:b: its
-- created (ms), deadline (ms; extend_hold.lua moves it), seats ("1A,1B"), amount, currency and who, joined by
-- \31 (who last, so it reads back whole). It has no TTL: it is deleted only
-- once the booking is in SQL (confirm_seats, release_seats and the expiry path run after the
-- booking's row is committed), so a lapsed hold's record is there for the expiry to write.
--
-- A key's entry {f:<flight>}:k:<key> (hash), kept for the key's retention: f fingerprint,
-- r what the first request got ("h" held, "t" seats taken, "n" not enough free seats); for
-- "h" the first answer's fields b, s, d, t, u, a, c; for "t" s = the taken seats; for "n"
-- s = how many seats were free.

-- Seats held or booked per customer of a flight: {f:<flight>}:u, a hash, field who (ARGV[3]
-- of the hold), value the seats. The hold scripts add a hold's seats and refuse one that
-- would pass the limit, while there is one (with none, nothing is counted: a field a
-- customer a flight is memory no hold needs); release_seats and free_lapsed take a booking's seats off once, when
-- its record goes (a held booking) or its booked seats go (a confirmed one).
local function customer_add(key, who, n)
  local left = redis.call('HINCRBY', key, who, n)
  if left <= 0 then redis.call('HDEL', key, who) end
end

-- who and the number of seats of a record (write_record's format), or nil, 0.
local function record_who(record)
  if not record then return nil, 0 end
  local seats, who = string.match(record, '^%d+\31%d+\31([^\31]*)\31[^\31]*\31[^\31]*\31(.*)$')
  if not who then return nil, 0 end
  local _, commas = string.gsub(seats, ',', '')
  return who, commas + 1
end

local function write_record(key, bid, seats, deadline, created)
  redis.call('HSET', key, bid,
    table.concat({created, deadline, seats, ARGV[4], ARGV[5], ARGV[3]}, '\31'))
end

-- nil when the key is new; {5} when it was used with another request; else {4, r, b, s, d,
-- t, u, a, c} (fields a refusal did not keep are "").
local function replay(key, fingerprint)
  local e = redis.call('HMGET', key, 'f', 'r', 'b', 's', 'd', 't', 'u', 'a', 'c')
  if not e[1] then return nil end
  if e[1] ~= fingerprint then return {5} end
  local out = {4}
  for i = 2, 9 do out[#out + 1] = e[i] or '' end
  return out
end

local function remember_hold(key, fingerprint, ttl, bid, seats, deadline, created)
  redis.call('HSET', key, 'f', fingerprint, 'r', 'h', 'b', bid, 's', seats, 'd', deadline,
    't', created, 'u', ARGV[3], 'a', ARGV[4], 'c', ARGV[5])
  redis.call('PEXPIRE', key, ttl)
end

local function remember_refusal(key, fingerprint, ttl, kind, detail)
  redis.call('HSET', key, 'f', fingerprint, 'r', kind, 's', detail)
  redis.call('PEXPIRE', key, ttl)
end

-- The free-seat index of a flight, for hold_best: {f:<flight>}:m, a bitmap, one bit a seat
-- in row-major order (1 = taken); {f:<flight>}:r and {f:<flight>}:c, one byte a row: the
-- row's longest run of free seats, and its number of free seats; {f:<flight>}:l, the layout
-- "<rows>:<letters>" (index_seats.lua writes it; without it there is no index, and hold_best
-- scans the seats). The scripts that take or free seats keep it; a seat freed by its TTL is
-- cleared by free_lapsed.lua once its expiry is recorded. So the index can only lag towards
-- "taken", which undersells, never towards "free": a seat is always taken with SET NX.

local function layout(key)
  local l = redis.call('GET', key)
  if not l then return nil, nil end
  local rows, letters = string.match(l, '^(%d+):(%u+)$')
  return tonumber(rows), letters
end

local function ensure_index(m, r, c, rows, width)
  if redis.call('EXISTS', r) == 0 then
    redis.call('SET', r, string.rep(string.char(width), rows))
    redis.call('SET', c, string.rep(string.char(width), rows))
  end
end

-- The row and bit offset of a seat name ("12C"), or nil for a name outside the layout.
local function seat_bit(name, letters, width, rows)
  local row = tonumber(string.sub(name, 1, -2))
  local col = string.find(letters, string.sub(name, -1), 1, true)
  if not row or not col or row < 1 or row > rows then return nil, nil end
  return row, (row - 1) * width + col - 1
end

-- The free columns (0-based, left to right) of a row whose bits (1 = taken) are v.
local function cols_of(v, width)
  local cols = {}
  for col = 0, width - 1 do
    if bit.band(bit.rshift(v, width - 1 - col), 1) == 0 then cols[#cols + 1] = col end
  end
  return cols
end

-- The free columns of a row, as the bitmap has them.
local function free_cols(m, row, width)
  return cols_of(redis.call('BITFIELD', m, 'GET', 'u' .. width, (row - 1) * width)[1], width)
end

local function reindex_row(m, r, c, row, width)
  local cols = free_cols(m, row, width)
  local best, run = 0, 0
  for i = 1, #cols do
    if i > 1 and cols[i] == cols[i - 1] + 1 then run = run + 1 else run = 1 end
    if run > best then best = run end
  end
  redis.call('SETRANGE', r, row - 1, string.char(best))
  redis.call('SETRANGE', c, row - 1, string.char(#cols))
end

-- Mark seat names taken (1) or free (0) in the index, if the flight has one.
local function index_mark(m, r, c, l, names, bit)
  local rows, letters = layout(l)
  if not rows then return end
  local width = #letters
  ensure_index(m, r, c, rows, width)
  local touched = {}
  for _, name in ipairs(names) do
    local row, offset = seat_bit(name, letters, width, rows)
    if row then
      redis.call('SETBIT', m, offset, bit)
      touched[row] = true
    end
  end
  for row in pairs(touched) do reindex_row(m, r, c, row, width) end
end

