#!lua flags=allow-oom
-- release_worker: a worker known to be gone (its pod deleted, evicted, OOM-killed) gives back
-- every job it held on this queue now, instead of when each lease runs out. Like reap, the
-- jobs go to the recovered list as suspects (their code may have killed the worker), a started
-- job is charged (orphaned + 1, an attempt "WorkerLost" with the reason given) and fails as
-- Abandoned once it was lost max_deliveries times; a prefetched one never started and is not
-- charged. No execution owns a released job: a late outcome from the lost worker reads STALE.
-- KEYS[1] leases zset   KEYS[2] prefetched zset   KEYS[3] recovered list   KEYS[4] failed zset
-- KEYS[5] wake list   KEYS[6] stats hash   KEYS[7] the worker's claimed set
-- ARGV[1] job key prefix   ARGV[2] worker ID   ARGV[3] max_deliveries for jobs that do not set
-- their own   ARGV[4] likewise failure TTL   ARGV[5] key prefix for corrupt job keys
-- ARGV[6] the reason (the WorkerLost attempt's message)
-- Returns {requeued IDs, abandoned IDs}; entries of the claimed set that another worker or
-- execution owns now are dropped from it and left alone.
local err = expect_types({KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'list', KEYS[4], 'zset',
  KEYS[5], 'list', KEYS[7], 'set'})
if err then return err end
local prefix, worker, reason = ARGV[1], ARGV[2], ARGV[6]
local now, now_str = now_s()
local requeued, abandoned = {}, {}

local function recover(id)
  local key = prefix .. id
  local f = redis.pcall('HMGET', key, 'status', 'worker', 'max_deliveries', 'failure_ttl', 'unique_lock', 'orphaned')
  local settled = settle(key, id, f, KEYS[4], ARGV[4], ARGV[5] .. id, now, now_str)
  -- Another worker's lease (the job was reaped and claimed again) is not ours to take.
  if settled or not LIVE[f[1]] or f[2] ~= worker then return end
  unlease(id, KEYS[2], KEYS[1], nil)
  if f[1] == 'prefetched' then
    redis.call('HDEL', key, 'worker', 'execution_id')
    redis.call('HSET', key, 'status', 'queued', 'suspect', '1')
    redis.call('RPUSH', KEYS[3], id)
    requeued[#requeued + 1] = id
    return
  end
  local lost = (int(f[6]) or 0) + 1
  redis.call('HSET', key, 'orphaned', lost)
  record_attempt(key, 'WorkerLost', reason, now_str)  -- reads the lost execution ID: clear it after
  redis.call('HDEL', key, 'worker', 'execution_id')
  local max = int(f[3])
  if max == nil or max < 1 then max = int(ARGV[3]) or 3 end
  if lost >= max then
    redis.call('HSET', key, 'status', 'failed', 'exc_type', 'Abandoned', 'exc_traceback', '',
      'exc_message', 'abandoned ' .. lost .. ' times: its worker was lost each time (' .. cut(reason, 200) .. ')',
      'ended_at', now_str)
    redis.call('HDEL', key, 'suspect')
    local score = retire(key, id, f[4], ARGV[4], f[5], now)
    register(KEYS[4], score and {score, id} or {}, now)
    abandoned[#abandoned + 1] = id
  else
    redis.call('HSET', key, 'status', 'queued', 'suspect', '1')
    redis.call('RPUSH', KEYS[3], id)
    requeued[#requeued + 1] = id
  end
end

for _, id in ipairs(redis.call('SMEMBERS', KEYS[7])) do
  recover(id)
end
redis.call('DEL', KEYS[7])
if #requeued > 0 then
  wake(KEYS[5])
  bump(KEYS[6], 'orphans_recovered', #requeued)
end
if #abandoned > 0 then bump(KEYS[6], 'abandoned', #abandoned) end
return {requeued, abandoned}
