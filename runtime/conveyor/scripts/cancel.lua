-- cancel: take a queued or scheduled job off its queue for good.
-- KEYS[1] ready list   KEYS[2] canceled zset   KEYS[3] scheduled zset
-- ARGV[1] job key prefix   ARGV[2] job ID   ARGV[3] failure TTL for a job without its own
-- Returns {OK} or {MISSING} or {WRONG_STATE, current status}.
local id = ARGV[2]
local key = ARGV[1] .. id
local status = redis.call('HGET', key, 'status')
if not status then return {MISSING} end
if status == 'queued' then
  redis.call('LREM', KEYS[1], 1, id)
elseif status == 'scheduled' then
  redis.call('ZREM', KEYS[3], id)
else
  return {WRONG_STATE, status}
end
local now, now_str = now_s()
redis.call('HSET', key, 'status', 'canceled', 'ended_at', now_str)
local f = redis.call('HMGET', key, 'failure_ttl', 'unique_lock')
local score = retire(key, id, f[1] or ARGV[3], f[2], now)
register(KEYS[2], score and {score, id} or {}, now)
return {OK}
