#!lua flags=allow-oom
-- renew: extend the leases a worker's executions still hold (prefetched or started).
-- KEYS[1] prefetched zset   KEYS[2] leases zset
-- ARGV[1] job key prefix   ARGV[2] lease ms, then per job two values: id, execution ID
-- Returns the execution IDs that no longer hold their job's lease (lost). (Execution IDs, not job
-- IDs: after a wipe one job ID can have an old and a new execution on the same worker.)
local err = expect_types({KEYS[1], 'zset', KEYS[2], 'zset'})
if err then return err end
local prefix = ARGV[1]
local deadline = now_ms() + tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local f = owner_fields(prefix .. id)
  if owner_code(f[1], f[2], ARGV[i + 1]) == OK then
    redis.call('ZADD', f[1] == S_STARTED and KEYS[2] or KEYS[1], 'XX', deadline, id)
  else
    lost[#lost + 1] = ARGV[i + 1]
  end
end
return lost
