-- Give a live status a time to live. ARGV: prefix, id, now ('' for the server's clock),
-- seconds to live, keep_ms.
local p = nextarg()
local id = nextarg()
local now = clock_now(nextarg())
local expires = clock_after(now, nextarg())
local keep_ms = nextarg()
local key = p .. ':task:' .. id
local value = redis.call('GET', key)
if not value then
  return 0
end
local s, t, x = string.match(value, STATUS_HEAD)
if not s or (x ~= '' and tonumber(x) <= tonumber(now)) then
  return 0
end
local data = string.sub(value, #s + #t + #x + 4)
redis.call('SET', key, s .. '\0' .. t .. '\0' .. expires .. '\0' .. data, 'PX', keep_ms)
redis.call('ZADD', p .. ':expiring', expires, id)
return 1
