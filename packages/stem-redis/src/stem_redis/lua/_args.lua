-- Every script starts with this: ARGV is read in order, section after section.

-- The command that wakes waiters: PUBLISH on one server; SPUBLISH (sharded pub/sub, on
-- the channel's own slot) in the Redis Cluster variant of each script (see _scripts.py).
local NOTIFY = 'PUBLISH'
local argi = 0
local function nextarg()
  argi = argi + 1
  return ARGV[argi]
end

-- A batch travels as two arguments (few arguments cost little to send): a MessagePack
-- list of records, and a blob holding their byte strings end to end (Redis's
-- MessagePack reader takes no binary type), each record giving the length of its own.
local function next_batch()
  local records = cmsgpack.unpack(nextarg())
  local blob = nextarg()
  local at = 1
  local function take(n)
    local piece = string.sub(blob, at, at + n - 1)
    at = at + n
    return piece
  end
  return records, take
end

-- A time as text that reads back as the same float (MessagePack gave a number).
local function time_text(t)
  if t == '' then
    return ''
  end
  return string.format('%.17g', t)
end

-- The time now, in seconds, as text that reads back as the same number. `arg` is what
-- the client sent: its clock's reading (a FakeClock in tests), or '' for the Redis
-- server's clock (TIME, read once per call), so that in production leases, delays and
-- expiries do not depend on the clients' clocks agreeing. A script reads `now` once
-- and measures every duration it is sent from it (see clock_after).
local server_now = nil
local function clock_now(arg)
  if arg ~= '' then
    return arg
  end
  if not server_now then
    local t = redis.call('TIME')
    server_now = string.format('%.17g', tonumber(t[1]) + tonumber(t[2]) / 1000000)
  end
  return server_now
end

-- `seconds` (text or a number) after the time `now` (text from clock_now), as text.
local function clock_after(now, seconds)
  return string.format('%.17g', tonumber(now) + tonumber(seconds))
end
