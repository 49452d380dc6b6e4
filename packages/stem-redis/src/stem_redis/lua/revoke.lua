-- ARGV: task id, entry, expires_at or '', now. Returns the entry's seq, larger than
-- that of every revocation recorded before (INCR in the same atomic call).
local id = nextarg()
local entry = nextarg()
local expires = nextarg()
local now = nextarg()
local seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], id, entry)
redis.call('ZADD', KEYS[2], seq, id)
if expires == '' then
  redis.call('ZREM', KEYS[3], id)
else
  redis.call('ZADD', KEYS[3], expires, id)
end
sweep_revokes(now, 100)
return seq
