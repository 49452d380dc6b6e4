-- KEYS as in schedule_upsert.lua. ARGV: id, ran_at, next_run_at ('' for none), drift.
-- Records one run in the entry's header, keeping the rest as it is: 1, or 0 when the
-- entry is gone (removed meanwhile: nothing to record, and nothing to bring back).
local id = nextarg()
local ran = nextarg()
local next_run = nextarg()
local drift = nextarg()
local value = redis.call('HGET', KEYS[1], id)
if not value then
  return 0
end
local fields = {}
local at = 1
for i = 1, 5 do
  local stop = string.find(value, '\0', at, true)
  if not stop then
    return redis.error_reply('ERR the schedule entry ' .. id .. ' was not written by Stem')
  end
  fields[i] = string.sub(value, at, stop - 1)
  at = stop + 1
end
local total = (tonumber(fields[5]) or 0) + 1
local header = table.concat({fields[1], next_run, ran, drift, string.format('%d', total)}, '\0')
redis.call('HSET', KEYS[1], id, header .. '\0' .. string.sub(value, at))
-- A disabled entry stays out of the index, whatever the run says
if fields[1] == '1' and next_run ~= '' then
  redis.call('ZADD', KEYS[2], next_run, id)
else
  redis.call('ZREM', KEYS[2], id)
end
return 1
