-- Subscribe to a broadcast queue, or renew. KEYS[1]: queue base. ARGV: subscriber, now
-- ('' for the server's clock), seconds to live. B:subs holds subscriber -> end.
local subscriber = nextarg()
local now = clock_now(nextarg())
redis.call('ZADD', KEYS[1] .. ':subs', clock_after(now, nextarg()), subscriber)
return 1
