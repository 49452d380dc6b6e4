-- Workflow runs (see _workflow.py). KEYS[1] is the hash tag {P:wf}: every key below
-- starts with it, so each script touches one slot (one node of a cluster).
--
-- WF:run:ID is a hash: 'body' (the run's JSON without the fields below), 'status',
-- 'fence', 'cursor', 'ver' (moves on at every change), 'workflow', 'created' and
-- 'parent' (for the indexes), and, each absent when None: 'wake', 'resume_at', 'topic',
-- 'deadline', 'owner', 'lease', 'updated', 'suspended', 'finished', 'result' and 'error'
-- (JSON), 'rkind', 'rtopic', 'rpayload' (JSON): the resume. Times are text that reads
-- back as the same float. Scripts never parse JSON: payloads travel as the client
-- encoded them.
local WF = KEYS[1]
local DUE = WF .. ':due' -- ids of non-final runs with a wake time, by wake_at
local CREATED = WF .. ':created' -- every id, by created_at (ties by id)
local WATCHERS = WF .. ':watchers' -- ids of runs waiting on a topic, by when they began

local FINAL = { completed = true, failed = true, cancelled = true }

local function run_key(id)
  return WF .. ':run:' .. id
end
local function steps_key(id)
  return WF .. ':steps:' .. id
end
local function watch_key(topic)
  return WF .. ':watch:' .. topic
end
-- The topics a run has kept events on, and one list per topic (the id's length keeps
-- 'a:b' + 'c' apart from 'a' + 'b:c').
local function mail_topics_key(id)
  return WF .. ':mailtopics:' .. id
end
local function mail_key(id, topic)
  return WF .. ':mail:' .. #id .. ':' .. id .. ':' .. topic
end
local function status_index(status)
  return WF .. ':by-status:' .. status
end
local function status_workflow_index(status, workflow)
  return WF .. ':by-status-workflow:' .. status .. ':' .. workflow
end

-- The fields a script decides by, as a table (false where absent); nil if no such run.
local RUN_FIELDS = { 'status', 'fence', 'workflow', 'created', 'wake', 'topic', 'lease' }
local function load(id)
  local v = redis.call('HMGET', run_key(id), unpack(RUN_FIELDS))
  if not v[1] then
    return nil
  end
  local r = { id = id }
  for i, name in ipairs(RUN_FIELDS) do
    r[name] = v[i]
  end
  return r
end

-- A running run still held at `fence`: the run, else nil.
local function fenced(id, fence)
  local r = load(id)
  if r and r.status == 'running' and r.fence == fence then
    return r
  end
  return nil
end

local function leased(r, now)
  return r.status == 'running' and r.lease and tonumber(r.lease) > tonumber(now)
end

-- Set or clear (value nil or false) a field.
local function put(id, field, value)
  if value then
    redis.call('HSET', run_key(id), field, value)
  else
    redis.call('HDEL', run_key(id), field)
  end
end

local function set_status(r, status)
  if r.status == status then
    return
  end
  redis.call('ZREM', status_index(r.status), r.id)
  redis.call('ZREM', status_workflow_index(r.status, r.workflow), r.id)
  redis.call('ZADD', status_index(status), r.created, r.id)
  redis.call('ZADD', status_workflow_index(status, r.workflow), r.created, r.id)
  redis.call('HSET', run_key(r.id), 'status', status)
  r.status = status
end

-- When due_runs may hand the run out (nil: not until something happens).
local function set_wake(r, t)
  put(r.id, 'wake', t)
  if t then
    redis.call('ZADD', DUE, t, r.id)
  else
    redis.call('ZREM', DUE, r.id)
  end
  r.wake = t
end

local function drop_watcher(r)
  redis.call('ZREM', WATCHERS, r.id)
  if r.topic then
    redis.call('ZREM', watch_key(r.topic), r.id)
  end
end

local function set_resume(id, kind, topic, payload)
  put(id, 'rkind', kind)
  put(id, 'rtopic', topic)
  put(id, 'rpayload', payload)
end

-- Every change of a run: its version moves on and its watchers are told.
local function changed(id)
  redis.call('HINCRBY', run_key(id), 'ver', 1)
  redis.call(NOTIFY, WF .. ':changed:' .. id, '')
end

-- A suspended run whose wake time came: pending, saying why it woke.
local function wake(r)
  if r.topic then
    drop_watcher(r)
    set_resume(r.id, 'timeout', r.topic, false)
  else
    set_resume(r.id, 'wake', false, false)
  end
  set_status(r, 'pending')
  -- 'suspended' stays: the engine judges max_suspend_duration by it
  redis.call('HDEL', run_key(r.id), 'topic', 'deadline', 'resume_at')
  r.topic = false
end

-- An event for a waiting run: pending and due now, the payload its resume.
local function resolve(r, topic, payload, now)
  drop_watcher(r)
  set_status(r, 'pending')
  set_resume(r.id, 'event', topic, payload)
  redis.call('HDEL', run_key(r.id), 'topic', 'deadline', 'suspended')
  r.topic = false
  set_wake(r, now)
  redis.call('HSET', run_key(r.id), 'updated', now)
  changed(r.id)
end

-- A run that became final: no lease, wait, wake time, resume or kept events.
local function ended(r, now)
  drop_watcher(r)
  redis.call('HDEL', run_key(r.id), 'owner', 'lease', 'topic', 'deadline', 'resume_at',
    'rkind', 'rtopic', 'rpayload')
  set_wake(r, false)
  redis.call('HSET', run_key(r.id), 'finished', now, 'updated', now)
  local topics = redis.call('SMEMBERS', mail_topics_key(r.id))
  for _, topic in ipairs(topics) do
    redis.call('DEL', mail_key(r.id, topic))
  end
  redis.call('DEL', mail_topics_key(r.id))
  changed(r.id)
end

-- The first argument of every script but wf_list and wf_watchers: now, '' for the
-- server's clock. Every time the store sets (lease ends, wake times, updated_at...) is on it.
local function wf_now()
  return clock_now(nextarg())
end

-- A run's hash as a flat list, for the client to decode.
local function run_fields(id)
  return redis.call('HGETALL', run_key(id))
end
