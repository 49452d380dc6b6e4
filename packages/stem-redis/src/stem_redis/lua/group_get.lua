-- The group, as group_add returns it, or false. KEYS[1]: its hash, KEYS[2]: its results.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local group = redis.call('HMGET', KEYS[1], 'size', 'meta', 'claimed')
return {group[1], group[2], group[3], redis.call('HGETALL', KEYS[2])}
