#!lua flags=allow-oom
-- release_worker: a worker known to be gone (its pod deleted, evicted, OOM-killed) gives back
-- every job it held on this queue now, instead of when each lease runs out; they are lost as
-- reap loses them (_lib's lose), the attempt recording the reason given.
-- KEYS[1] leases zset   KEYS[2] prefetched zset   KEYS[3] recovered list   KEYS[4] failed zset
-- KEYS[5] wake list   KEYS[6] stats hash   KEYS[7] the worker's claimed set   KEYS[8] ready list
-- KEYS[9] deferred zset   KEYS[10] canceled zset   KEYS[11] outbox list (with the wake list: an
-- abandoned job releases its dependents, _lib's release_all)
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
local requeued, abandoned, releasing = {}, {}, {}

local function recover(id)
  local key = prefix .. id
  local f = redis.pcall('HMGET', key, F_STATUS, F_WORKER, F_MAX_DELIVERIES, F_FAILURE_TTL, F_UNIQUE_LOCK, F_ORPHANED,
    F_WAITED, F_HAS_DEPENDENTS)
  local settled = settle(key, id, f, KEYS[4], ARGV[4], ARGV[5] .. id, now, now_str)
  -- Another worker's lease (the job was reaped and claimed again) is not ours to take.
  if settled or not LIVE[f[1]] or f[2] ~= worker then return end
  unlease(id, KEYS[2], KEYS[1], nil)
  local outcome = lose(key, id, f, f[1] ~= S_PREFETCHED, reason, cut(reason, 200), ARGV[3], KEYS[4], ARGV[4],
    KEYS[3], now, now_str)
  if outcome == 'abandoned' then abandoned[#abandoned + 1] = id else requeued[#requeued + 1] = id end
  if outcome == 'abandoned' and f[8] then releasing[#releasing + 1] = id end
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
if #releasing > 0 then
  release_all(dep_queue(prefix, {KEYS[8], KEYS[5], KEYS[9], KEYS[10], KEYS[11]}, ARGV[4]), releasing, false, now,
    now_str)
end
return {requeued, abandoned}
