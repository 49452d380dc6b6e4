-- One queue's keys, all under its hash tag B = {PREFIX:QUEUE}:
--   B:stream:L   a stream per priority lane L (0-9), consumer group 'stem'
--   B:leases:L   live leases: member ENTRYID/DELIVERIES, score = lease end
--   B:retry:L    deliveries given back (nack): same members, score = when ready again
--   B:delayed    messages with a future eta: member SEQ..payload, score = eta
--   B:seq        publish order of delayed messages with the same eta
--   B:dead       dead letters (a stream), B:dead:ids message id -> dead entry ids
--   B:once:TOKEN publishes already done (for a minute), see first_run
--   B:subs       broadcast subscriptions: member subscriber, score = when it ends
-- and the pub/sub channel B:wake, told when messages become ready.

local GROUP = 'stem'

local known_streams = {}
local function lane_stream(base, lane)
  local s = base .. ':stream:' .. lane
  if not known_streams[s] then
    if redis.call('EXISTS', s) == 0 then
      redis.call('XGROUP', 'CREATE', s, GROUP, '0', 'MKSTREAM')
    end
    known_streams[s] = true
  end
  return s
end

-- XREADGROUP of new entries; a stream written by hand before any Stem publish made
-- its group gets the group first. Returns the entries ({id, fields} each).
local function read_group(s, consumer, count)
  local r = redis.pcall('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', count, 'STREAMS', s, '>')
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'NOGROUP', 1, true) then
      error(r.err)
    end
    redis.call('XGROUP', 'CREATE', s, GROUP, '0')
    r = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', count, 'STREAMS', s, '>')
  end
  if not r then
    return {}
  end
  return r[1][2]
end

local function add_entry(base, lane, id, body, eta)
  local s = lane_stream(base, lane)
  if eta == '' then
    return redis.call('XADD', s, '*', 'id', id, 'body', body)
  end
  return redis.call('XADD', s, '*', 'id', id, 'body', body, 'eta', eta)
end

-- A delayed message is one sorted-set member: a 15-digit publish sequence (ties of
-- eta go out in publish order), the lane digit, then id and eta with their lengths,
-- then the body.
local function add_delayed(base, lane, id, body, eta)
  local seq = redis.call('INCR', base .. ':seq')
  local member = string.format('%015d', seq) .. lane .. string.format('%08d', #id) .. id
    .. string.format('%08d', #eta) .. eta .. body
  redis.call('ZADD', base .. ':delayed', eta, member)
end

local function read_delayed(member)
  local lane = string.sub(member, 16, 16)
  local n = tonumber(string.sub(member, 17, 24))
  local id = string.sub(member, 25, 24 + n)
  local at = 25 + n
  local e = tonumber(string.sub(member, at, at + 7))
  local eta = string.sub(member, at + 8, at + 7 + e)
  return lane, id, eta, string.sub(member, at + 8 + e)
end

-- Move delayed messages that are due (at most `cap`) to their streams, in due order.
-- Run before anything is added to the queue's streams, so that messages never handed
-- out stand in their streams in order of due time.
local function promote(base, now, cap)
  local key = base .. ':delayed'
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, cap)
  for _, member in ipairs(due) do
    local lane, id, eta, body = read_delayed(member)
    add_entry(base, lane, id, body, eta)
    redis.call('ZREM', key, member)
  end
  return #due
end

-- A publish carries a token: run twice for one call (its reply was lost and the
-- client sent it again on a fresh connection), it acts once.
local function first_run(token)
  return redis.call('SET', KEYS[1] .. ':once:' .. token, '', 'NX', 'PX', 60000) ~= false
end

-- Publish: the messages section of ARGV is now ('' for the server's clock), cap, then a
-- batch of {qi (its queue's index in KEYS), lane, id, eta or '', length of the body}.
-- An eta is the producer's (its clock's time), compared with now.
local function publish_messages()
  local now = clock_now(nextarg())
  local cap = tonumber(nextarg())
  local records, take = next_batch()
  local promoted = {}
  for _, r in ipairs(records) do
    local qi, lane, id, eta = r[1], r[2], r[3], r[4]
    local body = take(r[5])
    local base = KEYS[qi]
    if not promoted[qi] then
      promote(base, now, cap)
      promoted[qi] = true
    end
    if eta ~= '' and eta > tonumber(now) then
      add_delayed(base, lane, id, body, time_text(eta))
    else
      add_entry(base, lane, id, body, time_text(eta))
    end
  end
  for qi, _ in pairs(promoted) do
    redis.call(NOTIFY, KEYS[qi] .. ':wake', '')
  end
end

local function group_info(s)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', s)) do
    local t = {}
    for i = 1, #g, 2 do
      t[g[i]] = g[i + 1]
    end
    if t['name'] == GROUP then
      return t
    end
  end
  return nil
end

-- Acked entries are not deleted one by one (XDEL costs several microseconds): the
-- stream is trimmed up to its oldest entry still needed, the oldest pending one or,
-- with none pending, the group's last read. An entry not acknowledged is never
-- trimmed; with '~' Redis drops only whole nodes of acked entries, which is cheap.
-- A delivery pending for long (a slow task) holds the trim back: once more than
-- RETAIN acked entries wait behind it, entries acked from then on are deleted at once.
local TRIM_AT = 128
local RETAIN = 10000
local function trim(s, acked)
  if acked and redis.call('XLEN', s) < TRIM_AT then
    return
  end
  local info = group_info(s)
  if not info then
    return
  end
  local oldest = info['last-delivered-id']
  local pending = redis.call('XPENDING', s, GROUP)
  if pending[1] > 0 then
    oldest = pending[2]
  end
  redis.call('XTRIM', s, 'MINID', '~', oldest)
  if acked and #acked > 0 then
    local waiting = redis.call('XLEN', s) - pending[1] - (info['lag'] or 0)
    if waiting > RETAIN then
      redis.call('XDEL', s, unpack(acked))
    end
  end
end

-- Ack: the section is a batch of {qi, lane, entry id, deliveries} (its blob unused).
-- A delivery is current while its lease member exists. Returns how many were.
local function ack_deliveries()
  local records = next_batch()
  local by_lane, lanes = {}, {}
  for _, r in ipairs(records) do
    local key = KEYS[r[1]] .. ':' .. r[2]
    local group = by_lane[key]
    if not group then
      group = {KEYS[r[1]], r[2], {}, {}}
      by_lane[key] = group
      lanes[#lanes + 1] = group
    end
    group[3][#group[3] + 1] = r[3] .. '/' .. r[4]
    group[4][#group[4] + 1] = r[3]
  end
  local acked = 0
  for _, group in ipairs(lanes) do
    local base, lane, members, ids = group[1], group[2], group[3], group[4]
    local leases = base .. ':leases:' .. lane
    local current, current_ids, seen = {}, {}, {}
    for first = 1, #members, 4000 do
      local last = math.min(first + 3999, #members)
      local scores = redis.call('ZMSCORE', leases, unpack(members, first, last))
      for j = first, last do
        -- The same delivery twice in one call counts once.
        if scores[j - first + 1] and not seen[members[j]] then
          seen[members[j]] = true
          current[#current + 1] = members[j]
          current_ids[#current_ids + 1] = ids[j]
        end
      end
    end
    if #current > 0 then
      local s = base .. ':stream:' .. lane
      for first = 1, #current, 4000 do
        local last = math.min(first + 3999, #current)
        redis.call('ZREM', leases, unpack(current, first, last))
        redis.call('XACK', s, GROUP, unpack(current_ids, first, last))
      end
      trim(s, current_ids)
      acked = acked + #current
    end
  end
  return acked
end
