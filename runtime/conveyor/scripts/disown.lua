#!lua flags=allow-oom
-- disown: a claim whose reply never reached the worker (the connection dropped after Redis ran
-- it) leased jobs the worker does not know it holds; hand them back now (as release does)
-- instead of leaving them until their leases expire. They are found in the worker's claimed
-- set by the execution IDs that claim gave out: the worker's prefix and a number in the range
-- it reserved, so nothing another claim or worker holds is touched. Harmless when the claim
-- never ran, and when repeated.
-- KEYS[1] ready list   KEYS[2] recovered list   KEYS[3] prefetched zset   KEYS[4] leases zset
-- KEYS[5] the worker's claimed set   KEYS[6] wake list
-- ARGV[1] job key prefix   ARGV[2] worker ID   ARGV[3] execution ID prefix
-- ARGV[4] the claim's ARGV[7] (its jobs are numbered after it)   ARGV[5] how many it reserved
-- Returns the IDs handed back.
local err = expect_types({KEYS[1], 'list', KEYS[2], 'list', KEYS[3], 'zset', KEYS[4], 'zset',
  KEYS[5], 'set', KEYS[6], 'list'})
if err then return err end
local prefix, exec_prefix = ARGV[1], ARGV[3]
local first, last = tonumber(ARGV[4]) + 1, tonumber(ARGV[4]) + tonumber(ARGV[5])
local mine, ids = {}, {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  local exec = redis.pcall('HGET', prefix .. id, F_EXECUTION_ID)
  if type(exec) == 'string' and exec:sub(1, #exec_prefix) == exec_prefix then
    local seq = tonumber(exec:sub(#exec_prefix + 1))
    if seq and seq >= first and seq <= last then
      mine[#mine + 1] = {id, exec}
      ids[#ids + 1] = id
    end
  end
end
local codes = hand_back(mine, prefix, ARGV[2], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
local back = {}
for i, code in ipairs(codes) do
  if code == OK then back[#back + 1] = ids[i] end
end
return back
