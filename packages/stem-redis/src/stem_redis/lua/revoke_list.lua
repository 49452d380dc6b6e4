-- ARGV: now ('' for the server's clock), since (a seq; '-inf' for all), then optionally
-- one task id (get). Returns {now, task id, seq, entry, expires_at or false, ...} in seq
-- order; the expired ones the sweep left (it takes a batch at a time) are the
-- caller's to skip, by comparing expires_at with now.
local now = clock_now(nextarg())
local since = nextarg()
local one = nextarg()
sweep_revokes(now, 500)
local out = {now}
if one then
  local seq = redis.call('ZSCORE', KEYS[2], one)
  if seq then
    out = {now, one, seq, redis.call('HGET', KEYS[1], one), redis.call('ZSCORE', KEYS[3], one)}
  end
  return out
end
local low = since
if since ~= '-inf' then
  low = '(' .. since
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], low, '+inf', 'WITHSCORES')
if #ids == 0 then
  return out
end
-- HMGET and ZMSCORE in slices: Lua's unpack() takes a few thousand values at most.
for first = 1, #ids, 2000 do
  local names = {}
  for i = first, math.min(first + 1999, #ids), 2 do
    names[#names + 1] = ids[i]
  end
  local entries = redis.call('HMGET', KEYS[1], unpack(names))
  local ends = redis.call('ZMSCORE', KEYS[3], unpack(names))
  for j, name in ipairs(names) do
    out[#out + 1] = name
    out[#out + 1] = ids[first + 2 * j - 1]
    out[#out + 1] = entries[j]
    out[#out + 1] = ends[j]
  end
end
return out
