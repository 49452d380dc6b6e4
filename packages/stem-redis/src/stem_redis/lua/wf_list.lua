-- List runs (read only). KEYS[2]: the index to read (sorted by created_at, ties by id).
-- ARGV: offset, limit, then filters the index does not apply: workflow ('' for any,
-- after a '1' or '0' saying whether given), status ('' for any). Each run's fields.
local offset = tonumber(nextarg())
local limit = tonumber(nextarg())
local by_workflow = nextarg() == '1'
local workflow = nextarg()
local status = nextarg()
local out = {}
if limit <= 0 then
  return out
end
if not by_workflow and status == '' then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], offset, offset + limit - 1)) do
    local flat = run_fields(id)
    if #flat > 0 then
      out[#out + 1] = flat
    end
  end
  return out
end
-- A filter on top of the index (the children of one parent: few): read it through.
local skip = offset
local at = 0
while #out < limit do
  local ids = redis.call('ZRANGE', KEYS[2], at, at + 199)
  for _, id in ipairs(ids) do
    local v = redis.call('HMGET', run_key(id), 'workflow', 'status')
    if v[1] and (not by_workflow or v[1] == workflow) and (status == '' or v[2] == status) then
      if skip > 0 then
        skip = skip - 1
      elseif #out < limit then
        out[#out + 1] = run_fields(id)
      end
    end
  end
  if #ids < 200 then
    break
  end
  at = at + 200
end
return out
