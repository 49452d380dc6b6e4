-- Groups. KEYS[1]: the group's hash (size, meta, claimed: the chord's owner or '',
-- token, claimed_at, chord_meta; and for a group with a time to live: ttl in seconds,
-- keep: how long Redis keeps the keys, in ms, and expires: on the scripts' clock).
-- KEYS[2]: its results (member id -> status). Both keys share the group's hash tag.

-- Whether the group exists and has not expired at `now`.
local function group_live(now)
  local found = redis.call('HMGET', KEYS[1], 'size', 'expires')
  if not found[1] then
    return false
  end
  return not (found[2] and found[2] ~= '' and tonumber(found[2]) <= tonumber(now))
end

-- A write to the group: it expires `ttl` after `now`, and Redis drops its keys a while
-- after that (an expired group reads as absent before they go).
local function group_touch(now)
  local found = redis.call('HMGET', KEYS[1], 'ttl', 'keep')
  if found[1] and found[1] ~= '' then
    redis.call('HSET', KEYS[1], 'expires', clock_after(now, found[1]))
    redis.call('PEXPIRE', KEYS[1], found[2])
    redis.call('PEXPIRE', KEYS[2], found[2])
  end
end

-- The group as the client reads it: {size, meta, claimed, {member id, status, ...},
-- claimed_at, chord_meta}.
local function group_reply()
  local group = redis.call('HMGET', KEYS[1], 'size', 'meta', 'claimed', 'claimed_at', 'chord_meta')
  return {group[1], group[2], group[3], redis.call('HGETALL', KEYS[2]), group[4], group[5]}
end
