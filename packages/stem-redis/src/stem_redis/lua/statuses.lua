-- ARGV: the statuses section.
return store_statuses()
