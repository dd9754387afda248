-- Catalog upsert, last writer wins by (ts, event_id): idempotent and order-free by itself.
-- KEYS[1] item hash; ARGV: ts, event_id, (field, value)*
local ts = redis.call('HGET', KEYS[1], '_ts')
local eid = redis.call('HGET', KEYS[1], '_event')
if ts then
  local t = tonumber(ts)
  local n = tonumber(ARGV[1])
  if t > n or (t == n and eid >= ARGV[2]) then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_ts', ARGV[1], '_event', ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
