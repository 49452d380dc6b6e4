-- Beat entries (see _schedule.py). KEYS[1] is the hash tag {P:schedule}: every key below
-- starts with it, so each script touches one slot (one node of a cluster).
--
-- S:entry:ID is a hash: 'body' (the entry's JSON without the fields below), 'seq' (the
-- order entries were first stored in), 'enabled' ('1' or '0'), 'runs', 'ver' (moves on
-- at every write), and, each absent when None: 'next', 'last', 'drift', 'error',
-- 'owner' and 'until' (the claim). Times are text that reads back as the same float.
-- Scripts never parse JSON.
local S = KEYS[1]
local IDS = S .. ':ids' -- every id, by seq
local SEQ = S .. ':seq' -- the last seq given
local DUE = S .. ':due' -- ids of enabled entries with a next run and no claim, by next run
local CLAIMS = S .. ':claims' -- ids of claimed entries, by claim end

local function entry_key(id)
  return S .. ':entry:' .. id
end

-- File the entry in the index its fields call for: a claimed one in CLAIMS (due() moves
-- it back once the claim has run out), else an enabled one with a next run in DUE.
local function place(id)
  local v = redis.call('HMGET', entry_key(id), 'enabled', 'next', 'until')
  if v[3] then
    redis.call('ZREM', DUE, id)
    redis.call('ZADD', CLAIMS, v[3], id)
  elseif v[1] == '1' and v[2] then
    redis.call('ZREM', CLAIMS, id)
    redis.call('ZADD', DUE, v[2], id)
  else
    redis.call('ZREM', DUE, id)
    redis.call('ZREM', CLAIMS, id)
  end
end
