#!lua flags=allow-oom
-- promote: move scheduled jobs that are due to the tail of the ready list.
-- Idempotent: a job leaves the scheduled set once (ZREM), so two schedulers that both
-- run this at the same moment cannot enqueue it twice.
-- KEYS[1] scheduled zset   KEYS[2] ready list   KEYS[3] wake list   KEYS[4] failed zset
-- ARGV[1] job key prefix   ARGV[2] at most this many jobs
-- ARGV[3] failure TTL for malformed jobs   ARGV[4] key prefix for corrupt job keys
-- Returns {jobs moved, the next due time in ms or -1}.
local err = expect_types({KEYS[1], 'zset', KEYS[2], 'list', KEYS[3], 'list', KEYS[4], 'zset'})
if err then return err end
local prefix = ARGV[1]
local now = now_ms()
local now_sec, now_str = now_s()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local moved = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local key = prefix .. id
    local vals = redis.pcall('HMGET', key, F_STATUS)
    local gone = settle(key, id, vals, KEYS[4], ARGV[3], ARGV[4] .. id, now_sec, now_str)
    if not gone and vals[1] == S_SCHEDULED then
      redis.call('HSET', key, F_STATUS, S_QUEUED)
      redis.call('RPUSH', KEYS[2], id)
      moved = moved + 1
    end
  end
end
if moved > 0 then wake(KEYS[3]) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {moved, nxt[2] and math.floor(tonumber(nxt[2])) or -1}
