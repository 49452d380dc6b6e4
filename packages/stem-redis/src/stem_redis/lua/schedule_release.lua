-- Drop owner's claim without recording a firing: the entry is due again at once.
-- ARGV: id, owner. 1, or 0 if owner holds no claim on it.
local id = nextarg()
local key = entry_key(id)
if redis.call('HGET', key, 'owner') ~= nextarg() then
  return 0
end
redis.call('HDEL', key, 'owner', 'until')
place(id)
return 1
