-- Record a member's result once (the first one stays) and refresh the group's expiry;
-- returns the group (see group_reply), or false if it is unknown or expired (nothing is
-- stored). KEYS as in _group.lua. ARGV: now ('' for the server's clock), member id,
-- status (JSON).
local now = clock_now(nextarg())
if not group_live(now) then
  return false
end
local member = nextarg()
redis.call('HSETNX', KEYS[2], member, nextarg())
group_touch(now)
return group_reply()
