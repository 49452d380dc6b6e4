-- The producer's publish: queued statuses, then the messages, in one atomic call.
-- KEYS: queue bases. ARGV: a call token, the statuses section, the messages section.
if not first_run(nextarg()) then
  return 0
end
local swept = store_statuses()
publish_messages()
return swept
