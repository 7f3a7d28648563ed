#!lua flags=allow-oom
-- reap: jobs whose lease expired (their worker died, hung or lost Redis) go to the recovered
-- list, as suspects: their code may have crashed the worker, so they run one per worker.
-- A started job is charged (orphaned + 1, an attempt "WorkerLost") and fails as Abandoned
-- once it was lost max_deliveries times; a prefetched one never started and is not charged.
-- KEYS[1] leases zset   KEYS[2] prefetched zset   KEYS[3] recovered list   KEYS[4] failed zset
-- KEYS[5] wake list   KEYS[6] stats hash
-- ARGV[1] job key prefix   ARGV[2] claimed-set prefix (+ worker ID)   ARGV[3] at most this many jobs
-- ARGV[4] max_deliveries for jobs that do not set their own   ARGV[5] likewise failure TTL
-- ARGV[6] key prefix for corrupt job keys
-- Returns {requeued IDs, abandoned IDs}.
local err = expect_types({KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'list', KEYS[4], 'zset',
  KEYS[5], 'list'})
if err then return err end
local prefix, claimed_prefix, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now, now_str = now_s()
local now_msec = now_ms()
local requeued, abandoned = {}, {}

local function recover(id, started)
  local key = prefix .. id
  local f = redis.pcall('HMGET', key, 'status', 'worker', 'max_deliveries', 'failure_ttl', 'unique_lock', 'orphaned')
  if settle(key, id, f, KEYS[4], ARGV[5], ARGV[6] .. id, now, now_str) then return end
  if f[1] ~= (started and 'started' or 'prefetched') then return end  -- it moved on: a stale entry
  if f[2] then redis.pcall('SREM', claimed_prefix .. f[2], id) end
  -- No execution owns it now: a late outcome from the lost worker must read as STALE.
  if not started then
    redis.call('HDEL', key, 'worker', 'execution_id')
    redis.call('HSET', key, 'status', 'queued', 'suspect', '1')
    redis.call('RPUSH', KEYS[3], id)
    requeued[#requeued + 1] = id
    return
  end
  local lost = (int(f[6]) or 0) + 1
  redis.call('HSET', key, 'orphaned', lost)
  record_attempt(key, 'WorkerLost', 'lease expired: the worker running it was lost', now_str)
  redis.call('HDEL', key, 'worker', 'execution_id')
  local max = int(f[3])
  if max == nil or max < 1 then max = int(ARGV[4]) or 3 end
  if lost >= max then
    redis.call('HSET', key, 'status', 'failed', 'exc_type', 'Abandoned', 'exc_traceback', '',
      'exc_message', 'abandoned ' .. lost .. ' times: its worker was lost each time (lease expired)',
      'ended_at', now_str)
    redis.call('HDEL', key, 'suspect')
    local score = retire(key, id, f[4], ARGV[5], f[5], now)
    register(KEYS[4], score and {score, id} or {}, now)
    abandoned[#abandoned + 1] = id
  else
    redis.call('HSET', key, 'status', 'queued', 'suspect', '1')
    redis.call('RPUSH', KEYS[3], id)
    requeued[#requeued + 1] = id
  end
end

for _, started in ipairs({true, false}) do
  local zset = started and KEYS[1] or KEYS[2]
  local ids = redis.call('ZRANGEBYSCORE', zset, '-inf', now_msec, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('ZREM', zset, id)
    recover(id, started)
  end
end
if #requeued > 0 then
  wake(KEYS[5])
  bump(KEYS[6], 'orphans_recovered', #requeued)
end
if #abandoned > 0 then bump(KEYS[6], 'abandoned', #abandoned) end
return {requeued, abandoned}
