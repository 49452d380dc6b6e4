-- Revocations: KEYS[1] task id -> entry (JSON, without its seq), KEYS[2] task id ->
-- seq (the order of commits), KEYS[3] task id -> expires_at, KEYS[4] the seq counter.

local function sweep_revokes(now, batch)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, batch)
  if #gone > 0 then
    redis.call('HDEL', KEYS[1], unpack(gone))
    redis.call('ZREM', KEYS[2], unpack(gone))
    redis.call('ZREM', KEYS[3], unpack(gone))
  end
end
