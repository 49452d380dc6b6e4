-- Task statuses (see _backend.py). P:task:ID is a string: state NUL task NUL expires_at
-- NUL and the status as JSON (expires_at in seconds on the scripts' clock, that is the
-- server's unless the client sends its own, '' for never); the index
-- P:statuses:STATE:TASK is scored by updated_at, and P:task-names lists the task names
-- (listing by state alone reads each name's index); P:expiring is scored by expires_at,
-- for sweeping. Every redis.call costs about as much as the command itself, so index
-- changes are gathered and sent once per index per batch.

local STATUS_HEAD = '^([^%z]*)%z([^%z]*)%z([^%z]*)%z'

-- state, task and expires_at of a stored status, or nil.
local function status_head(key)
  local head = redis.call('GETRANGE', key, 0, 511)
  if head == '' then
    return nil
  end
  local s, t, x = string.match(head, STATUS_HEAD)
  if not s then -- a very long task name: read it all
    s, t, x = string.match(redis.call('GET', key), STATUS_HEAD)
  end
  return s, t, x
end

-- Run `command key ...values` in slices (Lua's unpack() takes a few thousand values).
local function variadic(command, key, values)
  for first = 1, #values, 4000 do
    redis.call(command, key, unpack(values, first, math.min(first + 3999, #values)))
  end
end

local function append(lists, key, ...)
  local list = lists[key]
  if not list then
    list = {}
    lists[key] = list
  end
  for _, v in ipairs({...}) do
    list[#list + 1] = v
  end
end

-- Delete up to `batch` statuses whose time ran out, with their index entries.
local function sweep_statuses(p, now, batch)
  local ids = redis.call('ZRANGEBYSCORE', p .. ':expiring', '-inf', now, 'LIMIT', 0, batch)
  for _, id in ipairs(ids) do
    local key = p .. ':task:' .. id
    local s, t, x = status_head(key)
    if s and x ~= '' and tonumber(x) <= tonumber(now) then
      redis.call('ZREM', p .. ':statuses:' .. s .. ':' .. t, id)
      redis.call('DEL', key)
    end
  end
  if #ids > 0 then
    variadic('ZREM', p .. ':expiring', ids)
  end
  return #ids
end

-- The statuses section of ARGV: prefix, now ('' for the server's clock), sweep ('1' or
-- '0'), then a batch of {id, state, task, updated_at (the writer's clock), seconds to
-- live or '', keep_ms, length of the JSON}, in order (a later write of one task
-- replaces an earlier one). Returns how many expired statuses were swept.
local function store_statuses()
  local p = nextarg()
  local now = nextarg()
  local sweep = nextarg()
  local records, take = next_batch()
  local before, after, order = {}, {}, {}
  for _, r in ipairs(records) do
    local id, state, task, updated, ttl, keep = r[1], r[2], r[3], r[4], r[5], r[6]
    local expires = ''
    if ttl ~= '' then
      expires = clock_after(clock_now(now), ttl)
    end
    local key = p .. ':task:' .. id
    if before[id] == nil then
      local s, t, x = status_head(key)
      before[id] = s and {s, t, x} or false
      order[#order + 1] = id
    end
    local value = state .. '\0' .. task .. '\0' .. expires .. '\0' .. take(r[7])
    if expires == '' then
      redis.call('SET', key, value) -- also drops an earlier time to live
    else
      -- Redis's own expiry, a while after the clock's, only frees memory if no process
      -- sweeps; what readers see follows expires_at and the app's clock.
      redis.call('SET', key, value, 'PX', keep)
    end
    after[id] = {state, task, updated, expires}
  end
  local drops, adds, expiring, kept, names, named = {}, {}, {}, {}, {}, {}
  for _, id in ipairs(order) do
    local old, new = before[id], after[id]
    if old and (old[1] ~= new[1] or old[2] ~= new[2]) then
      append(drops, p .. ':statuses:' .. old[1] .. ':' .. old[2], id)
    end
    append(adds, p .. ':statuses:' .. new[1] .. ':' .. new[2], new[3], id)
    if not named[new[2]] then
      named[new[2]] = true
      names[#names + 1] = new[2]
    end
    if new[4] ~= '' then
      expiring[#expiring + 1] = new[4]
      expiring[#expiring + 1] = id
    elseif old and old[3] ~= '' then
      kept[#kept + 1] = id
    end
    redis.call(NOTIFY, p .. ':changed:' .. id, '')
  end
  for key, ids in pairs(drops) do
    variadic('ZREM', key, ids)
  end
  for key, pairs_ in pairs(adds) do
    variadic('ZADD', key, pairs_)
  end
  if #names > 0 then
    variadic('SADD', p .. ':task-names', names)
  end
  if #expiring > 0 then
    variadic('ZADD', p .. ':expiring', expiring)
  end
  if #kept > 0 then
    variadic('ZREM', p .. ':expiring', kept)
  end
  if sweep == '1' then
    return sweep_statuses(p, clock_now(now), 500)
  end
  return 0
end
