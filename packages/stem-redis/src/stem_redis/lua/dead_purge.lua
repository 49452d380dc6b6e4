-- Delete dead letters. KEYS[1]: queue base. ARGV: chunk, then the selection section.
local base = KEYS[1]
local chunk = tonumber(nextarg())
if ARGV[argi + 1] == 'all' then
  local count = redis.call('XLEN', base .. ':dead')
  redis.call('UNLINK', base .. ':dead', base .. ':dead:ids')
  return count
end
local letters = chosen_letters(base, chunk)
for _, letter in ipairs(letters) do
  remove_letter(base, letter[1], letter[2])
end
return #letters
