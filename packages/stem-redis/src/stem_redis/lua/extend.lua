-- Move a live lease's end. KEYS[1]: queue base. ARGV: lane, entry id, deliveries, end.
local key = KEYS[1] .. ':leases:' .. nextarg()
local eid = nextarg()
local member = eid .. '/' .. nextarg()
if not redis.call('ZSCORE', key, member) then
  return 0
end
redis.call('ZADD', key, nextarg(), member)
return 1
