-- ARGV: task id, entry, now ('' for the server's clock), then when it expires: either
-- a time on the sender's clock and '', or '' and the seconds left ('' and '': never).
-- Returns the entry's seq, larger than that of every revocation recorded before (INCR
-- in the same atomic call).
local id = nextarg()
local entry = nextarg()
local now = clock_now(nextarg())
local expires = nextarg()
local left = nextarg()
if left ~= '' then
  expires = clock_after(now, left)
end
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
