-- KEYS[1]: the lock. ARGV: owner, now ('' for the server's clock), seconds to hold it,
-- keep_ms. Only its live owner renews it.
local owner = nextarg()
local now = clock_now(nextarg())
local held = redis.call('HMGET', KEYS[1], 'o', 'x')
if held[1] ~= owner or tonumber(held[2]) <= tonumber(now) then
  return 0
end
redis.call('HSET', KEYS[1], 'x', clock_after(now, nextarg()))
redis.call('PEXPIRE', KEYS[1], nextarg())
return 1
