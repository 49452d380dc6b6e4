-- Create (or start afresh) a group: KEYS as in _group.lua. ARGV: size, meta (JSON), now
-- ('' for the server's clock), seconds to live ('' for never), keep (ms).
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'size', nextarg(), 'meta', nextarg(), 'claimed', '')
local now = clock_now(nextarg())
local ttl = nextarg()
if ttl ~= '' then
  redis.call('HSET', KEYS[1], 'ttl', ttl, 'keep', nextarg())
  group_touch(now)
end
return 1
