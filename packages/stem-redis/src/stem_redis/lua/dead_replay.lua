-- Put dead letters back on their queue as new messages (deliveries start again).
-- KEYS[1]: queue base. ARGV: now ('' for the server's clock), delay (seconds) or '',
-- chunk, count of replaced bodies, then (message id, body) pairs, then the selection
-- section.
-- Returns {count, more}: more is 1 when 'all' may have left letters (call again).
local base = KEYS[1]
local now = clock_now(nextarg())
local delay = nextarg()
local eta = ''
if delay ~= '' then
  eta = clock_after(now, delay)
end
local chunk = tonumber(nextarg())
local bodies = {}
for _ = 1, tonumber(nextarg()) do
  local mid = nextarg()
  bodies[mid] = nextarg()
end
local letters, mode = chosen_letters(base, chunk)
local delayed = eta ~= '' and tonumber(eta) > tonumber(now)
for _, letter in ipairs(letters) do
  local did, f = letter[1], letter[2]
  local mid = f['id'] or ''
  local body = bodies[mid] or f['body'] or ''
  local lane = f['p'] or '0'
  if delayed then
    add_delayed(base, lane, mid, body, eta)
  else
    add_entry(base, lane, mid, body, '')
  end
  remove_letter(base, did, f)
end
if #letters > 0 then
  redis.call(NOTIFY, base .. ':wake', '')
end
local more = 0
if mode == 'all' and #letters == chunk then
  more = 1
end
return {#letters, more}
