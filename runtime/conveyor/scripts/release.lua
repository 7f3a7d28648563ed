-- release: hand leased jobs back to the head of their queue (shutdown, or claimed
-- but never started). Not a failure and not a delivery: the delivery count the
-- claim added is taken back.
-- KEYS[1] ready list   KEYS[2] leases zset   KEYS[3] the worker's claimed set   KEYS[4] wake list
-- ARGV[1] job key prefix, then per job two values: id, execution ID
-- Returns one code per job: OK, STALE (another execution owns it now) or MISSING.
local prefix = ARGV[1]
local codes = {}
local back = {}
for i = 2, #ARGV, 2 do
  local id, exec = ARGV[i], ARGV[i + 1]
  local key = prefix .. id
  redis.call('SREM', KEYS[3], id)
  local code = check_owner(key, exec)
  if code == OK then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HSET', key, 'status', 'queued')
    redis.call('HDEL', key, 'worker', 'started_at', 'execution_id')
    redis.call('HINCRBY', key, 'deliveries', -1)
    back[#back + 1] = id
  end
  codes[#codes + 1] = code
end
-- LPUSH reverses its arguments: push the last first so the first ends up at the head.
for i = #back, 1, -1 do redis.call('LPUSH', KEYS[1], back[i]) end
if #back > 0 then wake(KEYS[4]) end
return codes
