-- Record a checkpoint. ARGV: now, id, fence, name, cursor (its position + 1), the
-- checkpoint ('POSITION NUL' then its JSON). 1, or 0 if the run is not held at fence.
local now = wf_now()
local id = nextarg()
local r = fenced(id, nextarg())
if not r then
  return 0
end
local name = nextarg()
local cursor = nextarg()
redis.call('HSET', steps_key(id), name, nextarg())
redis.call('HDEL', run_key(id), 'rkind', 'rtopic', 'rpayload')
-- The cursor only moves forward: steps run at once may finish out of order.
if tonumber(cursor) < tonumber(redis.call('HGET', run_key(id), 'cursor') or '0') then
  cursor = redis.call('HGET', run_key(id), 'cursor')
end
redis.call('HSET', run_key(id), 'cursor', cursor, 'updated', now)
-- no changed(id): waiters wait for a status, which this does not change
return 1
