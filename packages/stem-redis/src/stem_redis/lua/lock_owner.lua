-- KEYS[1]: the lock. ARGV: now ('' for the server's clock). Its live owner, or false.
local held = redis.call('HMGET', KEYS[1], 'o', 'x')
if not held[1] or not held[2] or tonumber(held[2]) <= tonumber(clock_now(nextarg())) then
  return false
end
return held[1]
