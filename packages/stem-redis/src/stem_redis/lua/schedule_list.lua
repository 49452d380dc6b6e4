-- Every entry's fields, in the order they were first stored (read only). No ARGV.
local out = {}
for _, id in ipairs(redis.call('ZRANGE', IDS, 0, -1)) do
  local fields = redis.call('HGETALL', entry_key(id))
  if #fields > 0 then
    out[#out + 1] = fields
  end
end
return out
