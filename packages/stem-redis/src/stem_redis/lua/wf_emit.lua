-- Resolve every run waiting on a topic. ARGV: now, topic, payload (JSON).
-- Their ids, oldest wait first.
local now = wf_now()
local topic = nextarg()
local payload = nextarg()
local ids = redis.call('ZRANGE', watch_key(topic), 0, -1)
local resolved = {}
for _, id in ipairs(ids) do
  local r = load(id)
  if r then
    resolve(r, topic, payload, now)
    resolved[#resolved + 1] = id
  end
end
redis.call('DEL', watch_key(topic))
return resolved
