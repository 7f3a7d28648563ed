-- fail: record failed (or stopped) executions for good, if they still own their jobs.
-- KEYS[1] leases zset   KEYS[2] the worker's claimed set   KEYS[3] failed (or canceled) zset
-- ARGV[1] job key prefix   ARGV[2] the final status: "failed", or "canceled" for a job
-- stopped on request   ARGV[3] failure TTL for jobs without their own; then per job five values:
--   id, execution ID, exception type, exception message, traceback text
-- Returns one code per job: OK, STALE, MISSING or DUPLICATE (see complete.lua).
local prefix, final, default_ttl = ARGV[1], ARGV[2], ARGV[3]
local now, now_str = now_s()
local codes, ids, done, entries = {}, {}, {}, {}
for i = 4, #ARGV, 5 do
  local id, exec = ARGV[i], ARGV[i + 1]
  local key = prefix .. id
  ids[#ids + 1] = id
  local f = redis.call('HMGET', key, 'status', 'execution_id', 'failure_ttl', 'unique_lock')
  local code = owner_code(f[1], f[2], exec)
  if code == OK then
    done[#done + 1] = id
    record_attempt(key, ARGV[i + 2], ARGV[i + 3], now_str)
    redis.call('HSET', key, 'status', final, 'exc_type', ARGV[i + 2], 'exc_message', ARGV[i + 3],
      'exc_traceback', ARGV[i + 4], 'ended_at', now_str)
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
