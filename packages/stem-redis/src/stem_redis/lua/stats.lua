-- Counts of one queue. KEYS[1]: queue base. ARGV: now ('' for the server's clock).
-- Returns {pending, delayed, inflight, dead}.
-- Entries of a stream not read by the group yet: its lag (Redis 7), or counted when
-- Redis cannot tell (entries deleted by hand after the group's last read, Redis 6).
local function unread(s)
  local info = group_info(s)
  if not info then
    return redis.call('XLEN', s) -- nobody read it yet: written by hand
  end
  if info['lag'] then
    return info['lag']
  end
  local count, from = 0, '(' .. info['last-delivered-id']
  while true do
    local page = redis.call('XRANGE', s, from, '+', 'COUNT', 1000)
    count = count + #page
    if #page < 1000 then
      return count
    end
    from = '(' .. page[#page][1]
  end
end

local base = KEYS[1]
local now = clock_now(nextarg())
local after = '(' .. now
local delayed_key = base .. ':delayed'
local pending = redis.call('ZCOUNT', delayed_key, '-inf', now)
local delayed = redis.call('ZCOUNT', delayed_key, after, '+inf')
local inflight = 0
for lane = 0, 9 do
  local s = base .. ':stream:' .. lane
  if redis.call('EXISTS', s) == 1 then
    pending = pending + unread(s)
    local retry = base .. ':retry:' .. lane
    local leases = base .. ':leases:' .. lane
    pending = pending + redis.call('ZCOUNT', retry, '-inf', now)
      + redis.call('ZCOUNT', leases, '-inf', now)
    delayed = delayed + redis.call('ZCOUNT', retry, after, '+inf')
    inflight = inflight + redis.call('ZCOUNT', leases, after, '+inf')
  end
end
return {pending, delayed, inflight, redis.call('XLEN', base .. ':dead')}
