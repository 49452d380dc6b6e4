-- Remote control. KEYS[1]: a stream of control messages (a namespace's commands, or the
-- replies to one reply_to), whose readers wait on the channel of the same name.
-- ARGV: the message (JSON), how many entries to keep (about), ms to keep the stream
-- after this message ('' for ever).
local message = nextarg()
local keep = nextarg()
local ttl = nextarg()
redis.call('XADD', KEYS[1], 'MAXLEN', '~', keep, '*', 'm', message)
if ttl ~= '' then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call(NOTIFY, KEYS[1], '')
return 1
