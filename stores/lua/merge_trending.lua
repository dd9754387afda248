-- Add forward-decayed counts to a sorted set of items once per summary id.
-- Scores are held at the landmark stored in KEYS[3]; a later landmark beyond e^50 rescales all.
-- KEYS[1] guard, KEYS[2] zset, KEYS[3] landmark key; ARGV: guard ttl, tau ms, landmark, (item, score)*
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local tau = tonumber(ARGV[2])
local li = tonumber(ARGV[3])
local l = tonumber(redis.call('GET', KEYS[3]) or ARGV[3])
if li - l > 50 * tau then
  local factor = math.exp((l - li) / tau)
  local all = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do
    redis.call('ZADD', KEYS[2], string.format('%.17g', tonumber(all[i + 1]) * factor), all[i])
  end
  l = li
end
redis.call('SET', KEYS[3], string.format('%d', l))
local factor = math.exp((li - l) / tau)
for i = 4, #ARGV, 2 do
  redis.call('ZINCRBY', KEYS[2], string.format('%.17g', tonumber(ARGV[i + 1]) * factor), ARGV[i])
end
return 1
