-- Lease a runnable run. ARGV: now, id, owner, ttl. The run's fields as claimed,
-- or nil if it is not runnable now.
local now = wf_now()
local id = nextarg()
local owner = nextarg()
local ttl = nextarg()
local r = load(id)
if not r or FINAL[r.status] or leased(r, now) then
  return nil
end
if r.status == 'suspended' then
  if not r.wake or tonumber(r.wake) > tonumber(now) then
    return nil
  end
  wake(r)
end
set_status(r, 'running')
local ends = clock_after(now, ttl)
redis.call('HSET', run_key(id), 'owner', owner, 'lease', ends, 'updated', now)
redis.call('HINCRBY', run_key(id), 'fence', 1)
set_wake(r, ends)
changed(id)
return run_fields(id)
