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
