#!lua flags=allow-oom
-- retry: a failed execution will run again, at once (tail of the ready list) or when due.
-- The job keeps its ID; the attempt is recorded; the unique key stays held. It ended with an
-- exception, so it did not crash its worker: it is no longer a suspect.
-- KEYS[1] leases zset   KEYS[2] prefetched zset   KEYS[3] the worker's claimed set
-- KEYS[4] ready list   KEYS[5] scheduled zset   KEYS[6] wake list
-- ARGV[1] job key prefix   ARGV[2] worker ID   ARGV[3] channel to publish due times on
-- then per job six values: id, execution ID, exception type, message, traceback, delay in ms
-- Returns one code per job: OK, STALE, MISSING or DUPLICATE.
local err = expect_types({KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'set', KEYS[4], 'list',
  KEYS[5], 'zset', KEYS[6], 'list'})
if err then return err end
local prefix, worker, channel = ARGV[1], ARGV[2], ARGV[3]
local _, now_str = now_s()
local now = now_ms()
local codes = {}
local woke = false
for i = 4, #ARGV, 6 do
  local id, exec, delay = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 5]) or 0
  local key = prefix .. id
  local f = redis.pcall('HMGET', key, F_STATUS, F_EXECUTION_ID, F_WORKER, F_RETRIES)
  if f.err then f = {} end
  local code = owner_code(f[1], f[2], exec)
  if code == OK then
    unlease(id, KEYS[2], KEYS[1], nil)
    record_attempt(key, ARGV[i + 2], ARGV[i + 3], now_str)
    redis.call('HSET', key, F_EXC_TYPE, ARGV[i + 2], F_EXC_MESSAGE, ARGV[i + 3], F_EXC_TRACEBACK, ARGV[i + 4],
      F_RETRIES, (int(f[4]) or 0) + 1)
    redis.call('HDEL', key, F_WORKER, F_SUSPECT)
    if delay <= 0 then
      redis.call('HSET', key, F_STATUS, S_QUEUED)
      redis.call('RPUSH', KEYS[4], id)
      woke = true
    else
      local due = now + delay
      redis.call('HSET', key, F_STATUS, S_SCHEDULED, F_DUE_AT, due)
      redis.call('ZADD', KEYS[5], due, id)
      redis.call('PUBLISH', channel, due)
    end
    -- The status is no longer live: a repeat of this call must see DUPLICATE, not a
    -- second retry. owner_code does that by status; keep the execution ID as is.
  end
  unclaim(KEYS[3], id, code == OK and S_QUEUED or f[1], f[3], worker)
  codes[#codes + 1] = code
end
if woke then wake(KEYS[6]) end
return codes
