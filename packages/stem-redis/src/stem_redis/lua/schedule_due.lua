-- KEYS as in schedule_upsert.lua. ARGV: now, limit. The values of the entries due by
-- now, the oldest first (ties by id), read with the index in one atomic step.
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', nextarg(), 'LIMIT', 0, nextarg())
local out = {}
for first = 1, #ids, 500 do
  local values = redis.call('HMGET', KEYS[1], unpack(ids, first, math.min(first + 499, #ids)))
  for i = 1, #values do
    if values[i] then
      out[#out + 1] = values[i]
    end
  end
end
return out
