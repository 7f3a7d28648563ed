#!lua flags=allow-oom
-- claim: lease up to N jobs to one worker, each under an execution ID the worker made.
-- The first K start now (status started, charged a delivery); the rest are prefetched:
-- held in the worker's buffer, not running and not charged until start.lua starts them.
-- Allowed on a full Redis (allow-oom), so workers drain a backlog that producers cannot add to.
-- KEYS[1] ready list   KEYS[2] recovered list   KEYS[3] prefetched zset   KEYS[4] leases zset
-- KEYS[5] the worker's claimed set   KEYS[6] wake list   KEYS[7] failed zset   KEYS[8] limits hash
-- ARGV[1] job key prefix   ARGV[2] N   ARGV[3] K (<= N)   ARGV[4] lease ms   ARGV[5] worker ID
-- ARGV[6] execution ID prefix   ARGV[7] first execution number (the worker reserves N)
-- ARGV[8] "1": the worker may take one suspect from the recovered list (it starts now, within K)
-- ARGV[9] failure TTL for malformed jobs   ARGV[10] key prefix for corrupt job keys
-- ARGV[11 ..] names of the job fields to return
-- Flow control (a limits hash, see limits.lua): none, and the claim costs one HMGET more. With a
--   rate, or a max_concurrency the claim would reach, it starts at most min(K, tokens, max_concurrency
--   - leases held) and prefetches nothing (a prefetched job later starts without a token, and holds
--   a slot while it waits). Held = prefetched + started, so a max_concurrency the claim stays below
--   lets it prefetch as usual: those jobs count against it.
-- Returns {IDs left to claim, {malformed id, reason, ...}, throttle, then per claimed job: id,
--   execution ID, "started" or "prefetched", suspect ("1" or ""), the requested fields}. IDs whose
--   job hash is gone or whose job lives elsewhere (ended, canceled) are dropped, so fewer jobs than
--   asked does not mean the list is empty. A malformed job fails on its own (see _lib.lua).
--   throttle: {} or, when the queue's limits stopped this claim short, {"rate", ms until the next
--   token} or {"concurrency", 0}; then IDs left is 0 and no wake token is passed on (idle workers
--   would only meet the same limit).
local err = expect_types({KEYS[1], 'list', KEYS[2], 'list', KEYS[3], 'zset', KEYS[4], 'zset',
  KEYS[5], 'set', KEYS[6], 'list', KEYS[7], 'zset'})
if err then return err end
local prefix, n, k, lease_ms, worker = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local exec_prefix, seq, may_suspect, failure_ttl, corrupt = ARGV[6], tonumber(ARGV[7]), ARGV[8] == '1', ARGV[9], ARGV[10]
local fields = {F_SUSPECT, unpack(MALFORMED_FIELDS)}
local nv = #fields
for i = 11, #ARGV do fields[#fields + 1] = ARGV[i] end

local lim = redis.pcall('HMGET', KEYS[8], L_RATE, L_PERIOD_MS, L_BURST, L_MAX_CONCURRENCY, L_TOKENS, L_REFILLED_MS)
if lim.err then return expect_types({KEYS[8], 'hash'}) end
local rate, period, max_c = num(lim[1]), num(lim[2]), int(lim[4])
if not (rate and period and rate > 0 and period > 0) then rate = nil end
if max_c and max_c < 0 then max_c = nil end
local limited = rate or max_c
local by_rate, by_slots, tokens, bucket_ms, cut = math.huge, math.huge, 0, 0, false
if limited then
  if rate then
    local burst = math.max(1, num(lim[3]) or 1)
    bucket_ms = now_ms()
    tokens = num(lim[5])
    local last = num(lim[6])
    if tokens and last then
      tokens = math.min(burst, tokens + math.max(0, bucket_ms - last) * rate / period)
    else
      tokens = burst  -- a new bucket starts full
    end
    by_rate = math.floor(tokens)
  end
  if max_c then
    by_slots = math.max(0, max_c - redis.call('ZCARD', KEYS[4]) - redis.call('ZCARD', KEYS[3]))
  end
  if rate or by_slots < n then
    cut = true
    k = math.max(0, math.min(k, by_rate, by_slots))
    n = k
  end
end

local now, now_str = now_s()
local deadline = now_ms() + lease_ms
local out = {0, {}, {}}
local bad = out[2]
local started, prefetched, claimed, nstarted = {}, {}, {}, 0

local function take(id, suspect_list)
  local key = prefix .. id
  local vals = redis.pcall('HMGET', key, unpack(fields))
  if vals.err then
    bad[#bad + 1] = id
    bad[#bad + 1] = quarantine(key, id, corrupt .. id, KEYS[7], failure_ttl, now, now_str)
    return
  end
  local status = vals[2]
  if not status and redis.call('EXISTS', key) == 0 then return end  -- deleted: nothing to run
  if status ~= S_QUEUED and STATUSES[status] then return end  -- a stale entry: it lives elsewhere
  local f = {}
  for i = 2, nv do f[fields[i]] = vals[i] end
  local reason = malformed_reason(f)
  if reason then
    bad[#bad + 1] = id
    bad[#bad + 1] = reason
    fail_malformed(key, id, reason, KEYS[7], failure_ttl, now, now_str)
    return
  end
  seq = seq + 1
  local exec = exec_prefix .. seq
  local now_start = suspect_list or nstarted < k
  local deliveries = int(vals[9]) or 0
  if now_start then
    nstarted = nstarted + 1
    deliveries = deliveries + 1
    redis.call('HSET', key, F_STATUS, S_STARTED, F_EXECUTION_ID, exec, F_WORKER, worker,
      F_STARTED_AT, now_str, F_DELIVERIES, deliveries)
    started[#started + 1] = deadline
    started[#started + 1] = id
  else
    redis.call('HSET', key, F_STATUS, S_PREFETCHED, F_EXECUTION_ID, exec, F_WORKER, worker)
    prefetched[#prefetched + 1] = deadline
    prefetched[#prefetched + 1] = id
  end
  claimed[#claimed + 1] = id
  out[#out + 1] = id
  out[#out + 1] = exec
  out[#out + 1] = now_start and S_STARTED or S_PREFETCHED
  out[#out + 1] = vals[1] or ''
  for i = nv + 1, #fields do
    out[#out + 1] = fields[i] == F_DELIVERIES and tostring(deliveries) or vals[i]
  end
end

-- A suspect (recovered from a lost worker) first, one at most, and only into a free slot.
if may_suspect and k > 0 then
  local ids = redis.call('LPOP', KEYS[2], 1)
  if ids then take(ids[1], true) end
end
local want = n - #claimed
if want > 0 then
  local ids = redis.call('LPOP', KEYS[1], want)
  if ids then
    for _, id in ipairs(ids) do take(id, false) end
  end
end
if #started > 0 then redis.call('ZADD', KEYS[4], unpack(started)) end
if #prefetched > 0 then redis.call('ZADD', KEYS[3], unpack(prefetched)) end
if #claimed > 0 then redis.call('SADD', KEYS[5], unpack(claimed)) end
if rate then
  redis.call('HSET', KEYS[8], L_TOKENS, tostring(tokens - nstarted), L_REFILLED_MS, bucket_ms)
end
-- The limit, not this worker's free slots, cut the claim, and it took all the limit allowed.
if cut and nstarted >= math.min(by_rate, by_slots) and math.min(by_rate, by_slots) < tonumber(ARGV[3]) then
  if by_slots <= by_rate then
    out[3] = {T_CONCURRENCY, 0}
  else
    out[3] = {T_RATE, math.max(1, math.ceil((1 - (tokens - nstarted)) * period / rate))}
  end
end
if cut and (#out[3] > 0 or k == 0) then return out end  -- no baton: the limit holds for everyone
-- Pass the baton: if work remains that another idle worker may take, leave it a token.
out[1] = redis.call('LLEN', KEYS[1])
if may_suspect then out[1] = out[1] + redis.call('LLEN', KEYS[2]) end
if out[1] > 0 then wake(KEYS[6]) end
return out
