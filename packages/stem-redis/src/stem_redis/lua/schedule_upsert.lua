-- Beat entries. KEYS[1]: the entries (hash: id -> 'ENABLED NUL NEXT NUL LAST NUL DRIFT NUL
-- TOTAL NUL' then the entry as JSON, its run fields left out), KEYS[2]: the due index
-- (sorted set: the ids of enabled entries with a next run, by next_run_at).
-- ARGV: id, value, enabled ('1' or '0'), next_run_at ('' for none).
local id = nextarg()
local value = nextarg()
local enabled = nextarg()
local next_run = nextarg()
redis.call('HSET', KEYS[1], id, value)
if enabled == '1' and next_run ~= '' then
  redis.call('ZADD', KEYS[2], next_run, id)
else
  redis.call('ZREM', KEYS[2], id)
end
return 1
