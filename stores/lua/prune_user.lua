-- Drop every feature key of one user idle since before the cutoff, in one step (one hash tag).
-- Last activity: the newest event time in the user's recent interactions (KEYS[1], a sorted set)
-- or seen set (KEYS[2]: a string whose head is "<newest ms>;", transforms/summaries/seen.py, or a
-- sorted set of the earlier layout); a user with neither has no activity to be kept by. Checked
-- here, not by the caller, so an event merged between the caller's scan and this call keeps the user.
-- KEYS: recent, seen, then the user's other feature keys; ARGV: cutoff ms (clock now - idle TTL)
-- Returns the number of keys deleted (0: the user is active and kept).
local last = nil
for i = 1, 2 do
  local t = nil
  if redis.call('TYPE', KEYS[i])['ok'] == 'string' then
    t = tonumber(string.match(redis.call('GET', KEYS[i]), '^(-?%d+);'))
  else
    local top = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
    if top[2] then t = tonumber(top[2]) end
  end
  if t ~= nil and (last == nil or t > last) then last = t end
end
if last ~= nil and last >= tonumber(ARGV[1]) then return 0 end
return redis.call('DEL', unpack(KEYS))
