-- Lease up to `want` ready messages from the queues in KEYS, in the order given.
-- ARGV: now ('' for the server's clock), want, lease (seconds), consumer, promotion cap.
-- Returns {deliveries, next_due, now}: each delivery is {qi, lane, entry id,
-- deliveries, fields}; next_due (a score, or false) only when nothing was ready.
local now = clock_now(nextarg())
local want = tonumber(nextarg())
local lease_end = clock_after(now, nextarg()) -- a lease counts from this commit
local consumer = nextarg()
local cap = tonumber(nextarg())
local out = {}

-- Deliveries given back or whose lease ran out go out again before new ones of their
-- lane, under a new lease (XCLAIM counts the delivery; the entry is not copied).
local function take_over(base, s, lane, zkey)
  local members = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, want)
  if #members == 0 then
    return
  end
  local ids, counts = {}, {}
  for j, member in ipairs(members) do
    local eid, count = string.match(member, '^(.+)/(%d+)$')
    ids[j] = eid
    counts[eid] = tonumber(count)
  end
  redis.call('ZREM', zkey, unpack(members))
  local claimed = redis.call('XCLAIM', s, GROUP, consumer, 0, unpack(ids))
  local found, leases = {}, {}
  for _, entry in ipairs(claimed) do
    local eid = entry[1]
    local count = counts[eid] + 1
    found[eid] = true
    leases[#leases + 1] = lease_end
    leases[#leases + 1] = eid .. '/' .. count
    out[#out + 1] = {0, lane, eid, count, entry[2]}
    want = want - 1
  end
  if #leases > 0 then
    redis.call('ZADD', base .. ':leases:' .. lane, unpack(leases))
  end
  -- An entry deleted from the stream under its pending id is gone: forget it.
  for _, eid in ipairs(ids) do
    if not found[eid] then
      redis.call('XACK', s, GROUP, eid)
    end
  end
end

local function read_new(base, s, lane)
  local leases = {}
  for _, entry in ipairs(read_group(s, consumer, want)) do
    leases[#leases + 1] = lease_end
    leases[#leases + 1] = entry[1] .. '/1'
    out[#out + 1] = {0, lane, entry[1], 1, entry[2]}
    want = want - 1
  end
  if #leases > 0 then
    redis.call('ZADD', base .. ':leases:' .. lane, unpack(leases))
  end
end

for qi, base in ipairs(KEYS) do
  if want <= 0 then
    break
  end
  local first = #out + 1
  promote(base, now, cap)
  for lane = 9, 0, -1 do
    if want <= 0 then
      break
    end
    local s = base .. ':stream:' .. lane
    if redis.call('EXISTS', s) == 1 then
      take_over(base, s, lane, base .. ':retry:' .. lane)
      if want > 0 then
        take_over(base, s, lane, base .. ':leases:' .. lane)
      end
      if want > 0 then
        read_new(base, s, lane)
      end
    end
  end
  for j = first, #out do
    out[j][1] = qi
  end
end

local due = false
if #out == 0 then
  for _, base in ipairs(KEYS) do
    local keys = {base .. ':delayed'}
    for lane = 0, 9 do
      keys[#keys + 1] = base .. ':retry:' .. lane
      keys[#keys + 1] = base .. ':leases:' .. lane
    end
    for _, key in ipairs(keys) do
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if first[2] and (not due or tonumber(first[2]) < tonumber(due)) then
        due = first[2]
      end
    end
  end
end
return {out, due, now}
