-- KEYS[1]: the lock. ARGV: owner, now ('' for the server's clock). Only its live owner
-- releases it.
local owner = nextarg()
local now = clock_now(nextarg())
local held = redis.call('HMGET', KEYS[1], 'o', 'x')
if held[1] ~= owner or tonumber(held[2]) <= tonumber(now) then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
