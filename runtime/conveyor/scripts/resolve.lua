#!lua flags=allow-oom
-- resolve: outcomes of dependencies reach the deferred jobs of this queue waiting for them (from
-- another queue's outbox, or what depend.lua answered), and deferred jobs whose links are all
-- made are confirmed: the scheduler checks them again only after the recheck interval.
-- KEYS[1] ready list   KEYS[2] wake list   KEYS[3] deferred zset   KEYS[4] canceled zset
-- KEYS[5] outbox list (a job canceled here passes that on to its dependents on other queues)
-- ARGV[1] job key prefix   ARGV[2] failure TTL for a canceled job without its own
-- ARGV[3] recheck interval (ms)   ARGV[4] N, then N deferred job IDs to confirm
-- then triples: dependent job ID, dependency ref ("queue:id"), outcome ("1" finished, "0" not)
-- Returns {IDs queued, IDs canceled}. Each outcome acts once (_lib's resolve_dep).
local err = expect_types({KEYS[1], 'list', KEYS[2], 'list', KEYS[3], 'zset', KEYS[4], 'zset', KEYS[5], 'list'})
if err then return err end
local prefix = ARGV[1]
local Q = dep_queue(prefix, KEYS, ARGV[2])
local now, now_str = now_s()
local queued, canceled = {}, {}
local n = tonumber(ARGV[4])
local check = now_ms() + tonumber(ARGV[3])
for i = 5 + n, #ARGV, 3 do
  local id = ARGV[i]
  local outcome, more = resolve_dep(Q, id, ARGV[i + 1], ARGV[i + 2] == '1', now, now_str)
  if outcome == S_QUEUED then
    queued[#queued + 1] = id
  elseif outcome == S_CANCELED then
    canceled[#canceled + 1] = id
    if more then release_dependents(Q, id, false, now, now_str) end
  end
end
for i = 5, 4 + n do
  local id = ARGV[i]
  local status = redis.pcall('HGET', prefix .. id, F_STATUS)
  if status ~= S_DEFERRED then
    redis.call('ZREM', Q.deferred, id)  -- it moved on (or is gone): nothing to check
  elseif redis.call('SCARD', Q.base .. 'deps:' .. id) == 0 then
    -- Nothing left to wait for (only if written by hand): never deferred for ever.
    redis.call('ZREM', Q.deferred, id)
    redis.call('HSET', prefix .. id, F_STATUS, S_QUEUED)
    redis.call('RPUSH', Q.ready, id)
    wake(Q.wake)
    queued[#queued + 1] = id
  else
    redis.call('ZADD', Q.deferred, check, id)
  end
end
return {queued, canceled}
