-- Hand out due runs. ARGV: now, limit, redispatch_after. The ids of up to
-- `limit` runs whose wake_at has come and that no live lease holds, earliest first
-- (ties by created_at, then id); each one's wake_at moves redispatch_after on, and a
-- suspended one wakes.
local now = wf_now()
local limit = tonumber(nextarg())
local after = nextarg()
if limit <= 0 then
  return {}
end
-- Runs tied on the last wake time taken are read too (up to TIES more), so the order
-- among them is by created_at as the contract says, not by id.
local PAGE, TIES = 200, 1000
local found = {}
local last = nil
local offset = 0
local done = false
while not done do
  local page = redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'WITHSCORES', 'LIMIT', offset, PAGE)
  for i = 1, #page, 2 do
    local score = tonumber(page[i + 1])
    if #found >= limit and (score ~= last or #found >= limit + TIES) then
      done = true
      break
    end
    local r = load(page[i])
    if r and not FINAL[r.status] and not leased(r, now) then
      r.at, r.order = score, tonumber(r.created)
      found[#found + 1] = r
      last = score
    end
  end
  if #page < 2 * PAGE then
    break
  end
  offset = offset + PAGE
end
table.sort(found, function(a, b)
  if a.at ~= b.at then
    return a.at < b.at
  end
  if a.order ~= b.order then
    return a.order < b.order
  end
  return a.id < b.id
end)
local handed = {}
for i = 1, math.min(limit, #found) do
  local r = found[i]
  if r.status == 'suspended' then
    wake(r)
  end
  set_wake(r, clock_after(now, after))
  changed(r.id)
  handed[i] = r.id
end
return handed
