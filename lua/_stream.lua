-- _stream: not a script of its own; put in front of every script with _clock.lua. The
-- flight's seat stream {f:<flight>}:s (a Redis Stream, in the flight's slot): every change
-- of a seat's status is appended by the script that makes it, in the same atomic step, so
-- the stream and the seats never disagree about what happened first. One entry per script
-- call: s = the seats ("1A,1B"), t = their new status (h held, b booked, a available).
-- Trimmed to about maxlen entries (MAXLEN ~: whole nodes only, so a little over), which
-- bounds its memory per flight; maxlen 0 turns the stream off.
local function announce(key, maxlen, seats, status)
  if maxlen > 0 and #seats > 0 then
    redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 's', table.concat(seats, ','),
      't', status)
  end
end
