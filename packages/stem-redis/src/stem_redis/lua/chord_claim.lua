-- The first caller claims the chord of a live group, recording when and its meta, and
-- refreshes the group's expiry. KEYS as in _group.lua. ARGV: now ('' for the server's
-- clock), owner, a call token (the same call sent again after a lost reply is answered
-- as the first was), meta (JSON).
local now = clock_now(nextarg())
local owner = nextarg()
local token = nextarg()
local claimed = redis.call('HMGET', KEYS[1], 'claimed', 'token')
if claimed[1] == owner and claimed[2] == token then
  return 1
end
if claimed[1] == '' and group_live(now) then
  redis.call('HSET', KEYS[1], 'claimed', owner, 'token', token, 'claimed_at', now,
    'chord_meta', nextarg())
  group_touch(now)
  return 1
end
return 0 -- no group, expired, or claimed already
