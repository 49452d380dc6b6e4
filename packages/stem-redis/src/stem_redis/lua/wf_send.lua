-- Give an event to one run. ARGV: now, id, topic, payload (JSON). 1 if it was
-- resolved with it or keeps it, 0 if the run is unknown or final.
local now = wf_now()
local id = nextarg()
local topic = nextarg()
local payload = nextarg()
local r = load(id)
if not r or FINAL[r.status] then
  return 0
end
if r.status == 'suspended' and r.topic == topic then
  resolve(r, topic, payload, now)
else
  redis.call('RPUSH', mail_key(id, topic), payload)
  redis.call('SADD', mail_topics_key(id), topic)
end
return 1
