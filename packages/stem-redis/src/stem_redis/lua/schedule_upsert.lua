-- Create (version 0) or replace (the stored version) an entry. ARGV: id, version, then
-- the entry's field, value pairs (see _schedule.lua; 'seq' and 'ver' left out). An
-- existing entry keeps its seq and its claim (the beat's that holds it, not the
-- writer's). {1, the entry's fields as stored}, or {0, the stored version, -1 if none}.
local id = nextarg()
local version = tonumber(nextarg())
local key = entry_key(id)
local stored = redis.call('HMGET', key, 'ver', 'seq', 'owner', 'until')
local have = stored[1] and tonumber(stored[1]) or 0
if have ~= version then
  return { 0, stored[1] and have or -1 }
end
local seq = stored[2]
if not seq then
  seq = redis.call('INCR', SEQ)
  redis.call('ZADD', IDS, seq, id)
end
local fields = { 'seq', seq, 'ver', version + 1 }
local name = nextarg()
while name do
  local value = nextarg()
  if not (stored[1] and (name == 'owner' or name == 'until')) then
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
  name = nextarg()
end
if stored[3] then
  fields[#fields + 1] = 'owner'
  fields[#fields + 1] = stored[3]
end
if stored[4] then
  fields[#fields + 1] = 'until'
  fields[#fields + 1] = stored[4]
end
redis.call('DEL', key) -- the fields left out are None now
redis.call('HSET', key, unpack(fields))
place(id)
return { 1, redis.call('HGETALL', key) }
