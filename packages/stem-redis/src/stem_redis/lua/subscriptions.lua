-- A broadcast queue's subscriptions. KEYS[1]: queue base. ARGV: now ('' for the server's
-- clock). Returns {now, {subscriber, end, subscriber, end, ...}}.
local now = clock_now(nextarg())
return {now, redis.call('ZRANGE', KEYS[1] .. ':subs', 0, -1, 'WITHSCORES')}
