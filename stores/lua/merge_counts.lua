-- Add bucket counts to a hash once per summary id, then drop buckets no window reads any more.
-- KEYS[1] guard, KEYS[2] hash
-- ARGV: guard ttl (s), n prune rules, (code, min bucket)*, then (field, increment)*
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local nrules = tonumber(ARGV[2])
local keep = {}
local i = 3
for _ = 1, nrules do
  keep[ARGV[i]] = tonumber(ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  local code = string.match(field, '^([^|]+)|')
  local bucket = tonumber(string.match(field, '|(%-?%d+)$'))
  if code and bucket and keep[code] and bucket < keep[code] then
    redis.call('HDEL', KEYS[2], field)
  end
end
return 1
