#!lua flags=allow-oom
-- cancel: take a waiting job off its queue for good. A client cancels a queued or scheduled
-- job; a prefetched job is cancelled only by the worker holding it (it passes its execution
-- ID), because only that worker knows whether it has started the job's code yet.
-- KEYS[1] ready list   KEYS[2] canceled zset   KEYS[3] scheduled zset   KEYS[4] recovered list
-- KEYS[5] prefetched zset   KEYS[6] deferred zset   KEYS[7] wake list   KEYS[8] outbox list
-- (the ready, canceled, deferred, wake and outbox keys release the jobs waiting for the canceled
-- one, _lib's release_all; a deferred job can be canceled too)
-- ARGV[1] job key prefix   ARGV[2] job ID   ARGV[3] failure TTL for a job without its own
-- ARGV[4] execution ID of the prefetched job ("" from clients)   ARGV[5] claimed-set prefix
-- Returns {OK} or {MISSING} or {WRONG_STATE, current status, its worker or ""}.
local err = expect_types({KEYS[1], 'list', KEYS[2], 'zset', KEYS[3], 'zset', KEYS[4], 'list', KEYS[5], 'zset'})
if err then return err end
local id, exec = ARGV[2], ARGV[4]
local key = ARGV[1] .. id
local f = redis.pcall('HMGET', key, F_STATUS, F_EXECUTION_ID, F_WORKER, F_FAILURE_TTL, F_UNIQUE_LOCK, F_WAITED,
  F_HAS_DEPENDENTS)
if f.err or not f[1] then return {MISSING} end
local status = f[1]
if status == S_QUEUED and exec == '' then
  if redis.call('LREM', KEYS[1], 1, id) == 0 then redis.call('LREM', KEYS[4], 1, id) end
elseif status == S_SCHEDULED and exec == '' then
  redis.call('ZREM', KEYS[3], id)
elseif status == S_DEFERRED and exec == '' then
  redis.call('ZREM', KEYS[6], id)
  redis.call('DEL', queue_base(ARGV[1]) .. 'deps:' .. id)
elseif status == S_PREFETCHED and exec ~= '' and f[2] == exec then
  redis.call('ZREM', KEYS[5], id)
  if f[3] then redis.pcall('SREM', ARGV[5] .. f[3], id) end
  redis.call('HDEL', key, F_EXECUTION_ID, F_WORKER)
else
  return {WRONG_STATE, status, f[3] or ''}
end
local now, now_str = now_s()
redis.call('HSET', key, F_STATUS, S_CANCELED, F_ENDED_AT, now_str)
redis.call('HDEL', key, F_SUSPECT)
if f[6] then announce(key, id, 'e') end
local score = retire(key, id, f[4], ARGV[3], f[5], now)
register(KEYS[2], score and {score, id} or {}, now)
if f[7] then
  release_all(dep_queue(ARGV[1], {KEYS[1], KEYS[7], KEYS[6], KEYS[2], KEYS[8]}, ARGV[3]), {id}, false, now, now_str)
end
return {OK}
