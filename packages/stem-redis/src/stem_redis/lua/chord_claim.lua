-- The first caller claims the chord. KEYS[1]: the group's hash. ARGV: owner, a call
-- token (the same call sent again after a lost reply is answered as the first was).
local owner = nextarg()
local token = nextarg()
local claimed = redis.call('HMGET', KEYS[1], 'claimed', 'token')
if claimed[1] == '' then
  redis.call('HSET', KEYS[1], 'claimed', owner, 'token', token)
  return 1
end
if claimed[1] == owner and claimed[2] == token then
  return 1
end
return 0 -- no group, or claimed already
