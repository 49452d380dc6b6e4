-- The earliest wake_at of any non-final run (read only). ARGV: now. {wake_at or false, now}.
local now = clock_now(nextarg())
local first = redis.call('ZRANGE', DUE, 0, 0, 'WITHSCORES')
return { first[2] or false, now }
