#!lua flags=allow-oom
-- complete: record successful executions, if they still own their jobs. The error of an
-- earlier attempt (exc_type, exc_message, exc_traceback) is cleared; attempts keeps it.
-- KEYS[1] leases zset   KEYS[2] prefetched zset   KEYS[3] the worker's claimed set   KEYS[4] finished zset
-- KEYS[5] rate hash (jobs ended per 10 s, best effort)   KEYS[6] done zset (finished job -> ended time)
-- KEYS[7] ready list   KEYS[8] wake list   KEYS[9] deferred zset   KEYS[10] canceled zset
-- KEYS[11] outbox list: KEYS[7..11] release the jobs waiting for a finished one (_lib's release_all)
-- ARGV[1] job key prefix   ARGV[2] worker ID   ARGV[3] result TTL for jobs without their own
-- then per job three values: id, execution ID, serialized result
-- Returns one code per job: OK, STALE (another execution owns it now), MISSING, or
-- DUPLICATE (this execution's outcome was recorded already).
local err = expect_types({KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'set', KEYS[4], 'zset'})
if err then return err end
local prefix, worker, default_ttl = ARGV[1], ARGV[2], ARGV[3]
local now, now_str = now_s()
local codes, entries, ended, unclaimed, releasing = {}, {}, {}, {}, {}
for i = 4, #ARGV, 3 do
  local id, exec, result = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = prefix .. id
  local f = redis.pcall('HMGET', key, F_STATUS, F_EXECUTION_ID, F_RESULT_TTL, F_UNIQUE_LOCK, F_RETRIES, F_ORPHANED,
    F_WORKER, F_SUSPECT, F_EXC_TYPE, F_EXC_MESSAGE, F_EXC_TRACEBACK, F_WAITED, F_HAS_DEPENDENTS)
  if f.err then f = {} end
  local code = owner_code(f[1], f[2], exec)
  if code == OK then
    ended[#ended + 1] = id
    -- Jobs that failed or lost a worker before keep a history; the success ends it.
    if (int(f[5]) or 0) > 0 or (int(f[6]) or 0) > 0 then record_attempt(key, '', '', now_str) end
    redis.call('HSET', key, F_STATUS, S_FINISHED, F_RESULT, result, F_ENDED_AT, now_str)
    if f[8] or f[9] or f[10] or f[11] then  -- most jobs have none of these: no HDEL for them
      redis.call('HDEL', key, F_SUSPECT, F_EXC_TYPE, F_EXC_MESSAGE, F_EXC_TRACEBACK)
    end
    if f[12] then announce(key, id, 'e') end
    if f[13] then releasing[#releasing + 1] = id end
    local score = retire(key, id, f[3], default_ttl, f[4], now)
    if score then
      entries[#entries + 1] = score
      entries[#entries + 1] = id
    end
  end
  if not still_claimed(code == OK and S_FINISHED or f[1], f[7], worker) then unclaimed[#unclaimed + 1] = id end
  codes[#codes + 1] = code
end
-- Off the lease zsets and the worker's claimed set, all at once (see unlease and unclaim).
call_many('ZREM', KEYS[2], ended)
call_many('ZREM', KEYS[1], ended)
call_many('SREM', KEYS[3], unclaimed)
register(KEYS[4], entries, now)
count_ended(KEYS[5], S_FINISHED, #ended, now)
-- The last finished jobs, so a dependency on one whose hash has expired still counts as met.
-- Best effort (redis.pcall: a wrong-typed key never stops an outcome being recorded); one ZADD
-- per 500 jobs of the batch, and the trim in steps of 1,000.
for i = 1, #ended, 500 do
  local stamped = {}
  for j = i, math.min(i + 499, #ended) do stamped[#stamped + 1] = now; stamped[#stamped + 1] = ended[j] end
  redis.pcall('ZADD', KEYS[6], unpack(stamped))
end
local kept = #ended > 0 and redis.pcall('ZCARD', KEYS[6])
if type(kept) == 'number' and kept > DONE_KEPT + 1000 then
  redis.call('ZREMRANGEBYRANK', KEYS[6], 0, -DONE_KEPT - 1)
end
if #releasing > 0 then
  release_all(dep_queue(prefix, {KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]}, ''), releasing, true, now, now_str)
end
return codes
