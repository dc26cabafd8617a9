-- rate_limit: a token bucket per client, in Redis so that it holds across API processes.
--
-- KEYS[1]   rl:{<client>}   the client's bucket (hash: t tokens left, at the ms it was last
--                           filled); its own slot, apart from every flight's
-- ARGV[1]   tokens a second (the sustained rate, > 0)
-- ARGV[2]   the bucket's size (the burst allowed, >= 1)
--
-- One call takes one token, or none when the bucket is empty. The bucket expires once it
-- would be full again, so idle clients cost nothing.
--
-- Returns (closed set):
--   {1}               allowed (a token taken)
--   {0, wait_ms}      refused: the next token is due in wait_ms
local rate = tonumber(ARGV[1])
local size = tonumber(ARGV[2])
local now = now_ms()
local bucket = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(bucket[1]) or size
local at = tonumber(bucket[2]) or now
tokens = math.min(size, tokens + (now - at) * rate / 1000)
if tokens < 1 then
  return {0, math.ceil((1 - tokens) * 1000 / rate)}
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((size - tokens) * 1000 / rate) + 1000)
return {1}
