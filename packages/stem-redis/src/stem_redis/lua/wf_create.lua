-- Store a new run (see _wf.lua). ARGV: id, workflow, created, has parent ('1' or '0'),
-- parent, status, wake ('' for none), then the hash's fields and values. 0 if the id
-- is taken.
local id = nextarg()
local workflow = nextarg()
local created = nextarg()
local has_parent = nextarg() == '1'
local parent = nextarg()
local status = nextarg()
local wake_at = nextarg()
if redis.call('EXISTS', run_key(id)) == 1 then
  return 0
end
redis.call('HSET', run_key(id), unpack(ARGV, argi + 1))
redis.call('ZADD', CREATED, created, id)
redis.call('ZADD', WF .. ':by-workflow:' .. workflow, created, id)
redis.call('ZADD', status_index(status), created, id)
redis.call('ZADD', status_workflow_index(status, workflow), created, id)
if has_parent then
  redis.call('ZADD', WF .. ':by-parent:' .. parent, created, id)
end
if wake_at ~= '' and not FINAL[status] then
  redis.call('ZADD', DUE, wake_at, id)
end
changed(id)
return 1
