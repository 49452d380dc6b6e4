-- Delete the ready and delayed messages of one queue, and those whose lease ran out;
-- live leases stay. KEYS[1]: queue base. ARGV: now ('' for the server's clock),
-- consumer, chunk.
-- Returns {count, more}: more is 1 when unread entries may remain (call again).
local base = KEYS[1]
local now = clock_now(nextarg())
local consumer = nextarg()
local chunk = tonumber(nextarg())
local count = redis.call('ZCARD', base .. ':delayed')
redis.call('UNLINK', base .. ':delayed')
local more = 0
local function drop(s, ids)
  if #ids > 0 then
    redis.call('XACK', s, GROUP, unpack(ids)) -- trimmed below, with every acked entry
  end
end
local function entry_ids(members)
  local ids = {}
  for j, member in ipairs(members) do
    ids[j] = string.match(member, '^(.+)/%d+$')
  end
  return ids
end
for lane = 0, 9 do
  local s = base .. ':stream:' .. lane
  if redis.call('EXISTS', s) == 1 then
    local retry = base .. ':retry:' .. lane
    local given_back = redis.call('ZRANGE', retry, 0, chunk - 1)
    if #given_back > 0 then
      redis.call('ZREM', retry, unpack(given_back))
      drop(s, entry_ids(given_back))
      count = count + #given_back
      if #given_back == chunk then
        more = 1
      end
    end
    local leases = base .. ':leases:' .. lane
    local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, chunk)
    if #expired > 0 then
      redis.call('ZREM', leases, unpack(expired))
      drop(s, entry_ids(expired))
      count = count + #expired
      if #expired == chunk then
        more = 1
      end
    end
    local ids = {}
    for j, entry in ipairs(read_group(s, consumer, chunk)) do
      ids[j] = entry[1]
    end
    drop(s, ids)
    count = count + #ids
    if #ids == chunk then
      more = 1
    end
    trim(s, nil)
  end
end
return {count, more}
