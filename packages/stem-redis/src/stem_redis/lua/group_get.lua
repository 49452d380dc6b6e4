-- The group, as group_add returns it, or false if unknown or expired. KEYS as in
-- _group.lua. ARGV: now ('' for the server's clock).
if not group_live(clock_now(nextarg())) then
  return false
end
return group_reply()
