-- When the next delayed, given-back or leased message of the queues in KEYS becomes
-- ready. ARGV: now ('' for the server's clock). Returns {score, now}, or false.
local due = false
for _, base in ipairs(KEYS) do
  local keys = {base .. ':delayed'}
  for lane = 0, 9 do
    keys[#keys + 1] = base .. ':retry:' .. lane
    keys[#keys + 1] = base .. ':leases:' .. lane
  end
  for _, key in ipairs(keys) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[2] and (not due or tonumber(first[2]) < tonumber(due)) then
      due = first[2]
    end
  end
end
if not due then
  return false
end
return {due, clock_now(nextarg())}
