#!lua flags=allow-oom
-- fail: record failed (or stopped) executions for good, if they still own their jobs.
-- KEYS[1] leases zset   KEYS[2] prefetched zset   KEYS[3] the worker's claimed set
-- KEYS[4] failed (or canceled) zset   KEYS[5] rate hash (jobs ended per 10 s, best effort)
-- KEYS[6] ready list   KEYS[7] wake list   KEYS[8] deferred zset   KEYS[9] canceled zset
-- KEYS[10] outbox list: KEYS[6..10] release the jobs waiting for a failed one (_lib's release_all)
-- ARGV[1] job key prefix   ARGV[2] worker ID   ARGV[3] the final status: "failed", or "canceled"
-- for a job stopped on request   ARGV[4] failure TTL for jobs without their own; then per job
-- five values: id, execution ID, exception type, exception message, traceback text
-- Returns one code per job: OK, STALE, MISSING or DUPLICATE (see complete.lua).
local err = expect_types({KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'set', KEYS[4], 'zset'})
if err then return err end
local prefix, worker, final, default_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, now_str = now_s()
local codes, entries, ended, unclaimed, releasing = {}, {}, {}, {}, {}
for i = 5, #ARGV, 5 do
  local id, exec = ARGV[i], ARGV[i + 1]
  local key = prefix .. id
  local f = redis.pcall('HMGET', key, F_STATUS, F_EXECUTION_ID, F_FAILURE_TTL, F_UNIQUE_LOCK, F_WORKER, F_SUSPECT, F_WAITED,
    F_HAS_DEPENDENTS)
  if f.err then f = {} end
  local code = owner_code(f[1], f[2], exec)
  if code == OK then
    ended[#ended + 1] = id
    record_attempt(key, ARGV[i + 2], ARGV[i + 3], now_str)
    redis.call('HSET', key, F_STATUS, final, F_EXC_TYPE, ARGV[i + 2], F_EXC_MESSAGE, ARGV[i + 3],
      F_EXC_TRACEBACK, ARGV[i + 4], F_ENDED_AT, now_str)
    if f[6] then redis.call('HDEL', key, F_SUSPECT) end
    if f[7] then announce(key, id, 'e') end
    if f[8] then releasing[#releasing + 1] = id end
    local score = retire(key, id, f[3], default_ttl, f[4], now)
    if score then
      entries[#entries + 1] = score
      entries[#entries + 1] = id
    end
  end
  if not still_claimed(code == OK and final or f[1], f[5], worker) then unclaimed[#unclaimed + 1] = id end
  codes[#codes + 1] = code
end
-- Off the lease zsets and the worker's claimed set, all at once (see unlease and unclaim).
call_many('ZREM', KEYS[2], ended)
call_many('ZREM', KEYS[1], ended)
call_many('SREM', KEYS[3], unclaimed)
register(KEYS[4], entries, now)
count_ended(KEYS[5], final, #ended, now)
if #releasing > 0 then
  release_all(dep_queue(prefix, {KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]}, default_ttl), releasing, false, now,
    now_str)
end
return codes
