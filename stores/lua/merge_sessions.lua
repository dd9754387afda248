-- Merge session intervals into a hash once per summary id (rules in transforms/summaries/sessions.py).
-- A value is JSON [start, end, count, last_ts, last_event, surface, device]; fields are
-- "id:<session id>" (merge by id) or "auto:<start>" (coalesce intervals within the gap).
-- KEYS[1] guard, KEYS[2] hash; ARGV: guard ttl, gap ms, prune ended before (ms), (field, value)*
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local gap = tonumber(ARGV[2])
local prune_before = tonumber(ARGV[3])
local function later(a, b)  -- is a's last event after b's?
  if a[4] ~= b[4] then return a[4] > b[4] end
  return a[5] > b[5]
end
local function combine(a, b)
  local latest = later(a, b) and a or b
  return {math.min(a[1], b[1]), math.max(a[2], b[2]), a[3] + b[3], latest[4], latest[5], latest[6], latest[7]}
end
local explicit, implicit = {}, {}
local function add(field, s)
  if string.sub(field, 1, 3) == 'id:' then
    explicit[field] = explicit[field] and combine(explicit[field], s) or s
  else
    implicit[#implicit + 1] = s
  end
end
local stored = redis.call('HGETALL', KEYS[2])
for i = 1, #stored, 2 do add(stored[i], cjson.decode(stored[i + 1])) end
for i = 4, #ARGV, 2 do add(ARGV[i], cjson.decode(ARGV[i + 1])) end
table.sort(implicit, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  if a[2] ~= b[2] then return a[2] < b[2] end
  if a[4] ~= b[4] then return a[4] < b[4] end
  return a[5] < b[5]
end)
local merged = {}
local current = nil
for _, s in ipairs(implicit) do
  if current and s[1] - current[2] <= gap then
    current = combine(current, s)
  else
    if current then merged['auto:' .. string.format('%d', current[1])] = current end
    current = s
  end
end
if current then merged['auto:' .. string.format('%d', current[1])] = current end
for field, s in pairs(explicit) do merged[field] = s end
redis.call('DEL', KEYS[2])
for field, s in pairs(merged) do
  if s[2] > prune_before then
    redis.call('HSET', KEYS[2], field, cjson.encode(s))
  end
end
return 1
