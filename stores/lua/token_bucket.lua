-- Take `cost` tokens from one bucket, refilled at `rate` per second up to `burst`, atomically.
-- The caller's clock drives refills; a clock behind the stored one refills nothing (never negative).
-- KEYS[1] bucket hash {tokens, ts}; ARGV: rate (tokens/s), burst, now (ms), cost
-- Returns {allowed 0|1, retry_after_ms}; the hash expires once it would have refilled to full.
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  ts = now
end
-- EPS absorbs float rounding, so a caller that waits exactly retry_after_ms is served
local EPS = 1e-9
local allowed = 0
local retry = 0
if tokens + EPS >= cost then
  tokens = math.max(0, tokens - cost)
  allowed = 1
else
  retry = math.max(1, math.ceil((cost - tokens) * 1000 / rate - 1e-6))
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
return {allowed, retry}
