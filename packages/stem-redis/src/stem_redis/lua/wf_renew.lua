-- Extend a lease. ARGV: now, id, fence, ttl. 1, or 0 if the run is not held at fence.
local now = wf_now()
local id = nextarg()
local r = fenced(id, nextarg())
if not r then
  return 0
end
local ends = clock_after(now, nextarg())
redis.call('HSET', run_key(id), 'lease', ends)
set_wake(r, ends)
-- no changed(id): waiters wait for a status, which this does not change
return 1
