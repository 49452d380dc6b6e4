-- Cancel a run that is not final. ARGV: now, id, error (JSON). 1, or 0 if the
-- run is unknown or final.
local now = wf_now()
local id = nextarg()
local r = load(id)
if not r or FINAL[r.status] then
  return 0
end
set_status(r, 'cancelled')
redis.call('HSET', run_key(id), 'error', nextarg())
redis.call('HINCRBY', run_key(id), 'fence', 1)
ended(r, now)
return 1
