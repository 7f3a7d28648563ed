-- reap: jobs whose lease expired (their worker died, hung or lost Redis) go back to the
-- head of their queue, or to failed once they were abandoned max_deliveries times.
-- KEYS[1] leases zset   KEYS[2] ready list   KEYS[3] failed zset   KEYS[4] wake list   KEYS[5] stats hash
-- ARGV[1] job key prefix   ARGV[2] claimed-set prefix (+ worker ID)   ARGV[3] at most this many jobs
-- ARGV[4] max_deliveries for jobs that do not set their own   ARGV[5] likewise failure TTL
-- Returns {requeued IDs, abandoned IDs}.
local prefix, claimed_prefix = ARGV[1], ARGV[2]
local now, now_str = now_s()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[3]))
local requeued, abandoned = {}, {}
for _, id in ipairs(ids) do
  local key = prefix .. id
  redis.call('ZREM', KEYS[1], id)
  local f = redis.call('HMGET', key, 'status', 'worker', 'max_deliveries', 'failure_ttl', 'unique_lock')
  if f[1] == 'started' then
    if f[2] then redis.call('SREM', claimed_prefix .. f[2], id) end
    local lost = redis.call('HINCRBY', key, 'orphaned', 1)
    local max = tonumber(f[3] or ARGV[4])
    record_attempt(key, 'WorkerLost', 'lease expired: the worker running it was lost', now_str)
    -- No execution owns it now: a late outcome from the lost worker must read as STALE.
    redis.call('HDEL', key, 'worker', 'execution_id')
    if lost >= max then
      redis.call('HSET', key, 'status', 'failed', 'exc_type', 'Abandoned', 'exc_traceback', '',
        'exc_message', 'abandoned ' .. lost .. ' times: its worker was lost each time (lease expired)',
        'ended_at', now_str)
      local score = retire(key, id, f[4] or ARGV[5], f[5], now)
      register(KEYS[3], score and {score, id} or {}, now)
      abandoned[#abandoned + 1] = id
    else
      redis.call('HSET', key, 'status', 'queued', 'last_error', 'worker lost (lease expired)')
      redis.call('LPUSH', KEYS[2], id)
      requeued[#requeued + 1] = id
    end
  end
end
if #requeued > 0 then
  wake(KEYS[4])
  redis.call('HINCRBY', KEYS[5], 'orphans_recovered', #requeued)
end
if #abandoned > 0 then redis.call('HINCRBY', KEYS[5], 'abandoned', #abandoned) end
return {requeued, abandoned}
