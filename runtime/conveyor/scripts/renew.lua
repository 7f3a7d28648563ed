-- renew: extend the leases a worker's executions still hold.
-- KEYS[1] leases zset
-- ARGV[1] job key prefix   ARGV[2] lease ms, then per job two values: id, execution ID
-- Returns the IDs whose lease the given execution no longer holds (lost).
local prefix = ARGV[1]
local deadline = now_ms() + tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if check_owner(prefix .. id, ARGV[i + 1]) == OK then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
