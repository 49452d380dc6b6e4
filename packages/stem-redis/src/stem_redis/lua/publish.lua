-- KEYS: queue bases. ARGV: a call token, then the messages section (see _queue.lua).
if not first_run(nextarg()) then
  return 0
end
publish_messages()
return 0
