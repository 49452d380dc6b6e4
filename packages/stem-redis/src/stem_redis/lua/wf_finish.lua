-- Mark a running run completed or failed. ARGV: now, id, fence, status, result
-- (JSON, '' for none), error (JSON, '' for none). 1, or 0 if the run is not held at fence.
local now = wf_now()
local id = nextarg()
local r = fenced(id, nextarg())
if not r then
  return 0
end
set_status(r, nextarg())
local result = nextarg()
local err = nextarg()
put(id, 'result', result ~= '' and result)
put(id, 'error', err ~= '' and err)
ended(r, now)
return 1
