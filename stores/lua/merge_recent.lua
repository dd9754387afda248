-- Add (ts, member) entries to a sorted set once per summary id and keep the newest k. A member
-- already there keeps the later of its two times (GT), so merges commute (transforms/summaries/recent.py).
-- KEYS[1] guard, KEYS[2] zset; ARGV: guard ttl, k, (score, member)*
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 3, #ARGV, 2 do
  redis.call('ZADD', KEYS[2], 'GT', ARGV[i], ARGV[i + 1])
end
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[2]) + 1))
return 1
