-- Compare-and-set of one user's seen set (transforms/summaries/seen.py): the caller read the value,
-- merged its items in, and the merge is written only if the key still holds what it read — else 0,
-- and the caller reads and merges again, so concurrent writers converge on the union.
-- KEYS[1] seen key; ARGV[1]: SHA-1 hex of the value read, 'none' (absent) or 'zset' (a sorted set
-- of the earlier layout, replaced whole: its items were read and merged in); ARGV[2]: the new value
local kind = redis.call('TYPE', KEYS[1])['ok']
local read = kind
if kind == 'string' then read = redis.sha1hex(redis.call('GET', KEYS[1])) end
if read ~= ARGV[1] then return 0 end
if kind == 'zset' then redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[2])
return 1
