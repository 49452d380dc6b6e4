-- KEYS[1]: heartbeats (worker id -> JSON), KEYS[2]: their ends (worker id -> clock
-- seconds). ARGV: worker id, heartbeat, end, now. Expired heartbeats are dropped.
local id = nextarg()
redis.call('HSET', KEYS[1], id, nextarg())
redis.call('ZADD', KEYS[2], nextarg(), id)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', nextarg(), 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('HDEL', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
return 1
