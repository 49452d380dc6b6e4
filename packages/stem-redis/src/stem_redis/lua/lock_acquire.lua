-- KEYS[1]: the lock (o: owner, x: end, seconds on the scripts' clock). ARGV: owner, now
-- ('' for the server's clock), seconds to hold it, keep_ms.
local owner = nextarg()
local now = clock_now(nextarg())
local held = redis.call('HMGET', KEYS[1], 'o', 'x')
if held[1] and held[1] ~= owner and tonumber(held[2]) > tonumber(now) then
  return 0
end
redis.call('HSET', KEYS[1], 'o', owner, 'x', clock_after(now, nextarg()))
redis.call('PEXPIRE', KEYS[1], nextarg())
return 1
