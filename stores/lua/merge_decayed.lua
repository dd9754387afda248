-- Merge forward-decayed sums into hash fields once per summary id.
-- A field holds "landmark;s1,s2,...". Incoming sums at landmark Li join stored sums at L:
-- re-expressed at L while exp((Li - L)/tau) stays below e^50, else everything moves to Li.
-- Returns {1 if merged else 0, (field, value now)*}: a merge the guard skips still reports the
-- stored values, so a re-run re-derives what followed the merge (vector upserts) after a crash.
-- KEYS[1] guard, KEYS[2] hash; ARGV: guard ttl, tau ms (0 = no decay), (field, value)*
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  local now = {0}
  for i = 3, #ARGV, 2 do
    local stored = redis.call('HGET', KEYS[2], ARGV[i])
    if stored then
      now[#now + 1] = ARGV[i]
      now[#now + 1] = stored
    end
  end
  return now
end
local tau = tonumber(ARGV[2])
local function parse(v)
  local sep = string.find(v, ';', 1, true)
  local sums = {}
  for x in string.gmatch(string.sub(v, sep + 1), '[^,]+') do sums[#sums + 1] = tonumber(x) end
  return tonumber(string.sub(v, 1, sep - 1)), sums
end
local out = {1}
for i = 3, #ARGV, 2 do
  local field = ARGV[i]
  local li, si = parse(ARGV[i + 1])
  local stored = redis.call('HGET', KEYS[2], field)
  local l, s = li, si
  if stored then
    local ls, ss = parse(stored)
    local fa, fb = 1.0, 1.0  -- factors applied to stored and incoming
    if tau > 0 then
      if li - ls > 50 * tau then
        l = li
        fa = math.exp((ls - li) / tau)
      else
        l = ls
        fb = math.exp((li - ls) / tau)
      end
    else
      l = 0
    end
    s = {}
    for j = 1, math.max(#ss, #si) do
      s[j] = (ss[j] or 0) * fa + (si[j] or 0) * fb
    end
  end
  local parts = {}
  for j = 1, #s do parts[j] = string.format('%.17g', s[j]) end
  local value = string.format('%d', l) .. ';' .. table.concat(parts, ',')
  redis.call('HSET', KEYS[2], field, value)
  out[#out + 1] = field
  out[#out + 1] = value
end
return out
