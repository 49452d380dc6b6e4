-- Record a member's result once (the first one stays), and return the group:
-- {size, meta, claimed, {member id, status, ...}}, or false if there is no group.
-- KEYS[1]: the group's hash, KEYS[2]: its results. ARGV: member id, status (JSON).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local member = nextarg()
redis.call('HSETNX', KEYS[2], member, nextarg())
local group = redis.call('HMGET', KEYS[1], 'size', 'meta', 'claimed')
return {group[1], group[2], group[3], redis.call('HGETALL', KEYS[2])}
