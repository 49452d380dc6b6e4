-- The worker's settlement: results first, then the acks, in one atomic call.
-- KEYS: queue bases. ARGV: the statuses section, then the ack section.
local swept = store_statuses()
local acked = ack_deliveries()
return {swept, acked}
