-- Remove an entry. ARGV: id. 1 if it was there.
local id = nextarg()
redis.call('ZREM', IDS, id)
redis.call('ZREM', DUE, id)
redis.call('ZREM', CLAIMS, id)
return redis.call('DEL', entry_key(id))
