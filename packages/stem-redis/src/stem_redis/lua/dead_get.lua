-- The oldest dead letter of a message id. KEYS[1]: queue base. ARGV: message id.
-- Returns {dead entry id, fields} or false.
local base = KEYS[1]
local dids = dead_ids_of(base, nextarg())
table.sort(dids, older)
for _, did in ipairs(dids) do
  local entry = redis.call('XRANGE', base .. ':dead', did, did)
  if entry[1] then
    return entry[1]
  end
end
return false
