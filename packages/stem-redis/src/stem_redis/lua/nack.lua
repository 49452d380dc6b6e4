-- Give a delivery back. KEYS[1]: queue base. ARGV: lane, entry id, deliveries,
-- requeue ('1' or '0'), now ('' for the server's clock), seconds until it is ready again.
local base = KEYS[1]
local lane = nextarg()
local eid = nextarg()
local count = nextarg()
local requeue = nextarg()
local now = nextarg()
local delay = nextarg()
local member = eid .. '/' .. count
if redis.call('ZREM', base .. ':leases:' .. lane, member) == 0 then
  return 0
end
local s = base .. ':stream:' .. lane
if requeue == '1' then
  -- The entry stays where it is, pending; the next reserve after ready_at takes it over.
  redis.call('ZADD', base .. ':retry:' .. lane, clock_after(clock_now(now), delay), member)
  redis.call(NOTIFY, base .. ':wake', '')
else
  redis.call('XACK', s, GROUP, eid)
  trim(s, {eid})
end
return 1
