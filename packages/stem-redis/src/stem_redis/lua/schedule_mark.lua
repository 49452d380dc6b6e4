-- Record a firing by the owner of a live claim on it (the entry's next run is still
-- due_at): times moved on, runs counted unless it failed, claim dropped, version moved
-- on. ARGV: the store's now ('' for the server's clock), id, owner, due_at, ran_at,
-- next_run_at ('' for none), drift, '1' if it failed then its error ('0', '' if not).
-- 1, or 0 (changing nothing) if the claim was lost or the entry changed or went.
local now = clock_now(nextarg())
local id = nextarg()
local owner = nextarg()
local due_at = nextarg()
local key = entry_key(id)
local v = redis.call('HMGET', key, 'owner', 'until', 'next')
if v[1] ~= owner or not v[2] or tonumber(v[2]) <= tonumber(now) then
  return 0
end
if not v[3] or tonumber(v[3]) ~= tonumber(due_at) then
  return 0
end
local ran = nextarg()
local next_run = nextarg()
local drift = nextarg()
local failed = nextarg() == '1'
local err = nextarg()
redis.call('HSET', key, 'last', ran, 'drift', drift)
if next_run ~= '' then
  redis.call('HSET', key, 'next', next_run)
else
  redis.call('HDEL', key, 'next')
end
if failed then
  redis.call('HSET', key, 'error', err)
else
  redis.call('HDEL', key, 'error')
  redis.call('HINCRBY', key, 'runs', 1)
end
redis.call('HDEL', key, 'owner', 'until')
redis.call('HINCRBY', key, 'ver', 1)
place(id)
return 1
