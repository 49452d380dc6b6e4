-- Move a live lease's end. KEYS[1]: queue base. ARGV: lane, entry id, deliveries, now
-- ('' for the server's clock), seconds from now.
local key = KEYS[1] .. ':leases:' .. nextarg()
local eid = nextarg()
local member = eid .. '/' .. nextarg()
if not redis.call('ZSCORE', key, member) then
  return 0
end
local now = clock_now(nextarg())
redis.call('ZADD', key, clock_after(now, nextarg()), member)
return 1
