-- Replay a run from a checkpoint. ARGV: now, id, step. 1, or 0 if the run has
-- no checkpoint named step (or step#N).
local now = wf_now()
local id = nextarg()
local step = nextarg()
local r = load(id)
if not r then
  return 0
end
-- Checkpoints are 'POSITION NUL JSON'.
local flat = redis.call('HGETALL', steps_key(id))
local position = nil
local positions = {}
for i = 1, #flat, 2 do
  local name = flat[i]
  local at = tonumber(string.match(flat[i + 1], '^(%d+)%z'))
  positions[name] = at
  local head = string.match(name, '^(.*)#') or ''
  if (name == step or head == step) and (position == nil or at < position) then
    position = at
  end
end
if position == nil then
  return 0
end
for name, at in pairs(positions) do
  if name == step or at > position then
    redis.call('HDEL', steps_key(id), name)
  end
end
drop_watcher(r)
set_status(r, 'pending')
redis.call('HDEL', run_key(id), 'result', 'error', 'rkind', 'rtopic', 'rpayload', 'owner',
  'lease', 'topic', 'deadline', 'resume_at', 'suspended', 'finished')
redis.call('HSET', run_key(id), 'cursor', position, 'updated', now)
redis.call('HINCRBY', run_key(id), 'fence', 1)
set_wake(r, now)
changed(id)
return 1
