-- _clock: not a script of its own. The loader puts the _*.lua files in front of every
-- script; this one makes every deadline and every "now" read one way, from the Redis
-- server's clock (the one that expires the keys), whichever API process asked.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

