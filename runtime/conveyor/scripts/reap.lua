#!lua flags=allow-oom
-- reap: jobs whose lease expired (their worker died, hung or lost Redis) are lost (_lib's
-- lose: back as suspects, a started one charged, Abandoned at max_deliveries).
-- KEYS[1] leases zset   KEYS[2] prefetched zset   KEYS[3] recovered list   KEYS[4] failed zset
-- KEYS[5] wake list   KEYS[6] stats hash   KEYS[7] ready list   KEYS[8] deferred zset   KEYS[9] canceled zset
-- KEYS[10] outbox list (with the wake list: an abandoned job releases its dependents, _lib's release_all)
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
local requeued, abandoned, releasing = {}, {}, {}

local function recover(id, started)
  local key = prefix .. id
  local f = redis.pcall('HMGET', key, F_STATUS, F_WORKER, F_MAX_DELIVERIES, F_FAILURE_TTL, F_UNIQUE_LOCK, F_ORPHANED,
    F_WAITED, F_HAS_DEPENDENTS)
  if settle(key, id, f, KEYS[4], ARGV[5], ARGV[6] .. id, now, now_str) then return end
  if f[1] ~= (started and S_STARTED or S_PREFETCHED) then return end  -- it moved on: a stale entry
  if f[2] then redis.pcall('SREM', claimed_prefix .. f[2], id) end
  local outcome = lose(key, id, f, started, 'lease expired: the worker running it was lost', 'lease expired',
    ARGV[4], KEYS[4], ARGV[5], KEYS[3], now, now_str)
  if outcome == 'abandoned' then abandoned[#abandoned + 1] = id else requeued[#requeued + 1] = id end
  if outcome == 'abandoned' and f[8] then releasing[#releasing + 1] = id end
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
if #releasing > 0 then
  release_all(dep_queue(prefix, {KEYS[7], KEYS[5], KEYS[8], KEYS[9], KEYS[10]}, ARGV[5]), releasing, false, now, now_str)
end
return {requeued, abandoned}
