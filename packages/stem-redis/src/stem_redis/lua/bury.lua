-- Move a delivered message to the dead letters. KEYS[1]: queue base. ARGV: lane,
-- entry id, deliveries, then the letter: message id, body, eta or '', reason,
-- error, traceback (each '' for none, else '+' and the text), dead_at.
local base = KEYS[1]
local lane = nextarg()
local eid = nextarg()
local count = nextarg()
if redis.call('ZREM', base .. ':leases:' .. lane, eid .. '/' .. count) == 0 then
  return 0
end
local s = base .. ':stream:' .. lane
redis.call('XACK', s, GROUP, eid)
trim(s, {eid})
local mid = nextarg()
local fields = {'id', mid, 'body', nextarg(), 'p', lane}
local eta = nextarg()
if eta ~= '' then
  fields[#fields + 1] = 'eta'
  fields[#fields + 1] = eta
end
fields[#fields + 1] = 'reason'
fields[#fields + 1] = nextarg()
for _, name in ipairs({'error', 'tb'}) do
  local value = nextarg()
  if value ~= '' then
    fields[#fields + 1] = name
    fields[#fields + 1] = string.sub(value, 2)
  end
end
fields[#fields + 1] = 'n'
fields[#fields + 1] = count
fields[#fields + 1] = 'at'
fields[#fields + 1] = nextarg()
local did = redis.call('XADD', base .. ':dead', '*', unpack(fields))
local index = base .. ':dead:ids'
local before = redis.call('HGET', index, mid)
redis.call('HSET', index, mid, before and (before .. ' ' .. did) or did)
return 1
