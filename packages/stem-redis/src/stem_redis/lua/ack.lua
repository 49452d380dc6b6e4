-- KEYS: queue bases. ARGV: the ack section.
return ack_deliveries()
