-- KEYS[1]: heartbeats (worker id -> JSON), KEYS[2]: their ends (worker id -> seconds on
-- the scripts' clock). ARGV: worker id, heartbeat, now ('' for the server's clock),
-- seconds to live. Expired heartbeats are dropped.
local id = nextarg()
redis.call('HSET', KEYS[1], id, nextarg())
local now = clock_now(nextarg())
redis.call('ZADD', KEYS[2], clock_after(now, nextarg()), id)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('HDEL', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
return 1
