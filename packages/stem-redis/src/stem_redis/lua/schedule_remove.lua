-- KEYS as in schedule_upsert.lua. ARGV: id. Returns 1 if the entry was there.
local id = nextarg()
redis.call('ZREM', KEYS[2], id)
return redis.call('HDEL', KEYS[1], id)
