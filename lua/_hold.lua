-- _hold: not a script of its own; put in front of every script with _clock.lua. What the two
-- hold scripts share: the booking's record and the Idempotency-Key's entry. Both hold scripts
-- take ARGV[3] user id, ARGV[4] amount, ARGV[5] currency.
--
-- A booking's record {f:<flight>}:b:<id> (hash): u user, s seats ("1A,1B"), a amount,
-- c currency, t created (ms), d first deadline (ms). It has no TTL: it is deleted only once
-- the booking is in SQL (confirm_seats, release_seats and the expiry path run after the
-- booking's row is committed), so a lapsed hold's record is there for the expiry to write.
--
-- A key's entry {f:<flight>}:k:<key> (hash), kept for the key's retention: f fingerprint,
-- r what the first request got ("h" held, "t" seats taken, "n" not enough free seats); for
-- "h" the first answer's fields b, s, d, t, u, a, c; for "t" s = the taken seats; for "n"
-- s = how many seats were free.

local function write_record(key, seats, deadline, created)
  redis.call('HSET', key, 'u', ARGV[3], 's', seats, 'a', ARGV[4], 'c', ARGV[5],
    't', created, 'd', deadline)
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

