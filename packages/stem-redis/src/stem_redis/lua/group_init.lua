-- Create (or start afresh) a group. KEYS[1]: the group's hash, KEYS[2]: its results.
-- ARGV: size, meta (JSON).
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'size', nextarg(), 'meta', nextarg(), 'claimed', '')
return 1
