-- Give a running run back, pending and due now. ARGV: now, id, fence.
-- 1, or 0 if the run is not held at fence.
local now = wf_now()
local id = nextarg()
local r = fenced(id, nextarg())
if not r then
  return 0
end
set_status(r, 'pending')
redis.call('HDEL', run_key(id), 'owner', 'lease')
redis.call('HSET', run_key(id), 'updated', now)
set_wake(r, now)
changed(id)
return 1
