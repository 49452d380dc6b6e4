-- Live heartbeats: KEYS as heartbeat_set. ARGV: now ('' for the server's clock), then a
-- worker id (or none: all).
local now = clock_now(nextarg())
local id = nextarg()
if id then
  local ends = redis.call('ZSCORE', KEYS[2], id)
  if not ends or tonumber(ends) <= tonumber(now) then
    return {}
  end
  return {redis.call('HGET', KEYS[1], id)}
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')
local out = {}
-- HMGET in slices: Lua's unpack() takes a few thousand values at most.
for first = 1, #ids, 1000 do
  local names = {}
  for i = first, math.min(first + 999, #ids) do
    names[#names + 1] = ids[i]
  end
  for _, data in ipairs(redis.call('HMGET', KEYS[1], unpack(names))) do
    out[#out + 1] = data
  end
end
return out
