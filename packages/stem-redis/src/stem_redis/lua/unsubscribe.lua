-- Remove a subscription. KEYS[1]: queue base. ARGV: subscriber, now ('' for the server's
-- clock), and '' to remove it whatever its end, or N to remove it only if it ended at
-- least N seconds ago. Returns 1 if it was removed.
local key = KEYS[1] .. ':subs'
local subscriber = nextarg()
local now = clock_now(nextarg())
local ended_for = nextarg()
local ends = redis.call('ZSCORE', key, subscriber)
if not ends then
  return 0
end
if ended_for ~= '' and tonumber(ends) > tonumber(now) - tonumber(ended_for) then
  return 0
end
return redis.call('ZREM', key, subscriber)
