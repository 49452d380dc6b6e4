-- Suspend a running run. ARGV: now, id, fence, wake_at, resume_at, has topic
-- ('1' or '0'), topic, deadline (times '' for none). {0} if the run is not held at
-- fence; {2, payload} if an event kept for it on the topic was taken instead; else {1}.
local now = wf_now()
local id = nextarg()
local r = fenced(id, nextarg())
if not r then
  return { 0 }
end
local wake_at = nextarg()
local resume_at = nextarg()
local has_topic = nextarg() == '1'
local topic = nextarg()
local deadline = nextarg()
if has_topic then
  local mail = mail_key(id, topic)
  local payload = redis.call('LPOP', mail)
  if payload then
    if redis.call('EXISTS', mail) == 0 then
      redis.call('SREM', mail_topics_key(id), topic)
    end
    -- Kept as the run's resume until its next checkpoint, so a crash loses nothing.
    set_resume(id, 'event', topic, payload)
    redis.call('HSET', run_key(id), 'updated', now)
    changed(id)
    return { 2, payload }
  end
  redis.call('ZADD', WATCHERS, now, id)
  redis.call('ZADD', watch_key(topic), now, id)
end
set_status(r, 'suspended')
set_wake(r, wake_at ~= '' and wake_at)
put(id, 'resume_at', resume_at ~= '' and resume_at)
put(id, 'topic', has_topic and topic)
put(id, 'deadline', deadline ~= '' and deadline)
redis.call('HDEL', run_key(id), 'owner', 'lease')
redis.call('HSET', run_key(id), 'suspended', now, 'updated', now)
changed(id)
return { 1 }
