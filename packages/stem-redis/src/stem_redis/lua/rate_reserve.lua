-- GCRA. KEYS[1]: the key's theoretical arrival time (TAT), when its next start is free.
-- ARGV: now (seconds; '' reads the server's clock), the interval between starts.
-- Books the next start, max(TAT, now), moves the TAT one interval past it, and returns
-- how far the start is from now, as text (a Lua number would reach the client cut to
-- an integer). A start is never in the past, and idle time banks no burst.
local now = tonumber(clock_now(nextarg()))
local interval = tonumber(nextarg())
local start = now
local tat = tonumber(redis.call('GET', KEYS[1]) or '')
if tat and tat > now then
  start = tat
end
local booked = start + interval
-- Redis forgets the key a minute after its TAT has passed: by then it books nothing.
local keep_ms = math.ceil((booked - now) * 1000) + 60000
redis.call('SET', KEYS[1], string.format('%.17g', booked), 'PX', string.format('%d', keep_ms))
return string.format('%.17g', start - now)
