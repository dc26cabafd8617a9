-- begin_payment: fence a payment to the hold it pays for, and keep the hold through payment.
--
-- KEYS[1]        {f:<flight>}:d      deadline index (sorted set: booking id -> deadline, Unix ms)
-- KEYS[2..n+1]   {f:<flight>}:<seat> every seat of the booking
-- ARGV[1]        booking id
-- ARGV[2]        payment window, milliseconds (integer > 0)
--
-- Returns (closed set):
--   {1, deadline_ms}   every seat is still held by this booking; the hold now lasts at least
--                      until deadline_ms, so it cannot lapse while the payment runs
--   {0}                the hold is lost (expired, released or taken): nothing changed
local rcall = redis.call
local bid = ARGV[1]

for i = 2, #KEYS do
  if rcall('GET', KEYS[i]) ~= bid then return {0} end
end
local current = rcall('ZSCORE', KEYS[1], bid)
if not current then return {0} end

local deadline = now_ms() + tonumber(ARGV[2])
if tonumber(current) > deadline then deadline = tonumber(current) end
local at = string.format('%d', deadline)
for i = 2, #KEYS do
  rcall('PEXPIREAT', KEYS[i], at)
end
rcall('ZADD', KEYS[1], at, bid)
return {1, deadline}
