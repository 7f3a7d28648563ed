-- complete: record successful executions, if they still own their jobs.
-- KEYS[1] leases zset   KEYS[2] the worker's claimed set   KEYS[3] finished zset
-- ARGV[1] job key prefix   ARGV[2] result TTL for jobs without their own
-- then per job three values: id, execution ID, serialized result
-- Returns one code per job: OK, STALE (another execution owns it now), MISSING, or
-- DUPLICATE (this execution's outcome was recorded already).
local prefix, default_ttl = ARGV[1], ARGV[2]
local now, now_str = now_s()
local codes, ids, done, entries = {}, {}, {}, {}
for i = 3, #ARGV, 3 do
  local id, exec, result = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = prefix .. id
  ids[#ids + 1] = id
  local f = redis.call('HMGET', key, 'status', 'execution_id', 'result_ttl', 'unique_lock', 'retries', 'orphaned')
  local code = owner_code(f[1], f[2], exec)
  if code == OK then
    done[#done + 1] = id
    -- Jobs that failed or lost a worker before keep a history; the success ends it.
    if f[5] or f[6] then record_attempt(key, '', '', now_str) end
    redis.call('HSET', key, 'status', 'finished', 'result', result, 'ended_at', now_str)
    local score = retire(key, id, f[3] or default_ttl, f[4], now)
    if score then
      entries[#entries + 1] = score
      entries[#entries + 1] = id
    end
  end
  codes[#codes + 1] = code
end
redis.call('SREM', KEYS[2], unpack(ids))
if #done > 0 then redis.call('ZREM', KEYS[1], unpack(done)) end
register(KEYS[3], entries, now)
return codes
