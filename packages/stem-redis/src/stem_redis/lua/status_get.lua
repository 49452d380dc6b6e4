-- Stored statuses, and the time their expiry is judged by, read in one step.
-- KEYS: status keys. ARGV: now ('' for the server's clock).
-- Returns {now, value or false, ...}.
local out = {clock_now(nextarg())}
for i, key in ipairs(KEYS) do
  out[i + 1] = redis.call('GET', key)
end
return out
