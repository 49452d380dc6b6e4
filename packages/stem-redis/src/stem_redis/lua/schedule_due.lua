-- Claim the enabled entries due by `now` that no live claim holds, the oldest first
-- (ties in the order they were first stored). ARGV: now (the caller's), the store's
-- now ('' for the server's clock), owner, claim seconds, limit. Each claimed entry's
-- fields.
local due_by = nextarg()
local now = clock_now(nextarg())
local owner = nextarg()
local claim_end = clock_after(now, nextarg())
local limit = tonumber(nextarg())
local out = {}
if limit <= 0 then
  return out
end
-- Claims that ran out: their entries may be handed out again
for _, id in ipairs(redis.call('ZRANGEBYSCORE', CLAIMS, '-inf', now)) do
  redis.call('ZREM', CLAIMS, id)
  local v = redis.call('HMGET', entry_key(id), 'enabled', 'next')
  if v[1] == '1' and v[2] then
    redis.call('ZADD', DUE, v[2], id)
  end
end
local found = redis.call('ZRANGEBYSCORE', DUE, '-inf', due_by, 'WITHSCORES', 'LIMIT', 0, limit)
local picked = {}
local seen = {}
for i = 1, #found, 2 do
  picked[#picked + 1] = { id = found[i], at = tonumber(found[i + 1]) }
  seen[found[i]] = true
end
if #picked == limit then
  -- Entries due at the same time as the last one may have been stored before it
  local last = found[#found]
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', DUE, last, last)) do
    if not seen[id] then
      picked[#picked + 1] = { id = id, at = tonumber(last) }
    end
  end
end
local kept = {}
for _, p in ipairs(picked) do
  local seq = redis.call('HGET', entry_key(p.id), 'seq')
  if seq then
    p.seq = tonumber(seq)
    kept[#kept + 1] = p
  else
    redis.call('ZREM', DUE, p.id) -- not an entry (a key Stem did not write): left alone
  end
end
picked = kept
table.sort(picked, function(a, b)
  if a.at ~= b.at then
    return a.at < b.at
  end
  return a.seq < b.seq
end)
for i = 1, math.min(limit, #picked) do
  local id = picked[i].id
  local key = entry_key(id)
  redis.call('HSET', key, 'owner', owner, 'until', claim_end)
  redis.call('ZREM', DUE, id)
  redis.call('ZADD', CLAIMS, claim_end, id)
  out[#out + 1] = redis.call('HGETALL', key)
end
return out
