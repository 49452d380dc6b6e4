-- The runs waiting on a topic, or on any (read only). ARGV: has topic ('1' or '0'),
-- topic. For each: id, topic, deadline (false for none), when the wait began.
local has_topic = nextarg() == '1'
local topic = nextarg()
local ids = redis.call('ZRANGE', has_topic and watch_key(topic) or WATCHERS, 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local v = redis.call('HMGET', run_key(id), 'topic', 'deadline', 'suspended')
  if v[1] then
    out[#out + 1] = { id, v[1], v[2], v[3] }
  end
end
return out
