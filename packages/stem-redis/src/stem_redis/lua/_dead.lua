-- Dead letters: the stream B:dead (fields id, body, p, eta, reason, error, tb, n, at)
-- and the index B:dead:ids, message id -> its dead entry ids (space separated; a
-- message id may be dead-lettered more than once).

local function fields_of(flat)
  local t = {}
  for i = 1, #flat, 2 do
    t[flat[i]] = flat[i + 1]
  end
  return t
end

local function dead_ids_of(base, mid)
  local ids = {}
  local value = redis.call('HGET', base .. ':dead:ids', mid)
  if value then
    for did in string.gmatch(value, '%S+') do
      ids[#ids + 1] = did
    end
  end
  return ids
end

local function forget_dead(base, mid, did)
  local index = base .. ':dead:ids'
  local keep = {}
  for _, other in ipairs(dead_ids_of(base, mid)) do
    if other ~= did then
      keep[#keep + 1] = other
    end
  end
  if #keep == 0 then
    redis.call('HDEL', index, mid)
  else
    redis.call('HSET', index, mid, table.concat(keep, ' '))
  end
end

local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if tonumber(am) ~= tonumber(bm) then
    return tonumber(am) < tonumber(bm)
  end
  return tonumber(as) < tonumber(bs)
end

-- The selection section of ARGV: 'all' (the oldest `chunk` letters), or 'ids',
-- a count and the message ids. Returns the letters, oldest first, as {did, fields}.
local function chosen_letters(base, chunk)
  local mode = nextarg()
  local letters = {}
  local dead = base .. ':dead'
  if mode == 'all' then
    for _, entry in ipairs(redis.call('XRANGE', dead, '-', '+', 'COUNT', chunk)) do
      letters[#letters + 1] = {entry[1], fields_of(entry[2])}
    end
    return letters, mode
  end
  local n = tonumber(nextarg())
  local dids, seen = {}, {}
  for _ = 1, n do
    local mid = nextarg()
    if not seen[mid] then
      seen[mid] = true
      for _, did in ipairs(dead_ids_of(base, mid)) do
        dids[#dids + 1] = {did, mid}
      end
    end
  end
  table.sort(dids, function(a, b) return older(a[1], b[1]) end)
  for _, pair in ipairs(dids) do
    local entry = redis.call('XRANGE', dead, pair[1], pair[1])
    if entry[1] then
      letters[#letters + 1] = {pair[1], fields_of(entry[1][2])}
    else
      forget_dead(base, pair[2], pair[1]) -- an index entry left by a hand-made delete
    end
  end
  return letters, mode
end

local function remove_letter(base, did, fields)
  redis.call('XDEL', base .. ':dead', did)
  forget_dead(base, fields['id'] or '', did)
end
