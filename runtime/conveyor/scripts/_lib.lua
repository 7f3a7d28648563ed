-- Shared helpers, put before every script by scripts/__init__.py (after the constants
-- generated from conveyor/protocol.py: return codes such as OK, statuses such as S_QUEUED,
-- job-hash fields such as F_STATUS; scripts use those, never the strings themselves).
-- A script gets only the definitions it uses (helpers_for): each starts with "local" at
-- column 0, its comment just above it.
--
-- Scripts validate before they mutate: a queue key of the wrong type stops a script
-- before it changes anything (expect_types), and a bad job is dealt with on its own
-- (pcall, safe numbers, fail_malformed) so the other jobs of the same call proceed.

-- Redis server time, so leases and timestamps never depend on worker clocks.
local function now_parts()
  local t = redis.call('TIME')
  return tonumber(t[1]), tonumber(t[2])
end

local function now_ms()
  local s, us = now_parts()
  return s * 1000 + math.floor(us / 1000)
end

-- Seconds as a number and as a string with microseconds (Lua numbers print
-- with too few digits for timestamps).
local function now_s()
  local s, us = now_parts()
  return s + us / 1000000, s .. '.' .. string.format('%06d', us)
end

local STATUSES = {[S_QUEUED] = true, [S_SCHEDULED] = true, [S_PREFETCHED] = true, [S_STARTED] = true,
  [S_FINISHED] = true, [S_FAILED] = true, [S_CANCELED] = true, [S_DEFERRED] = true}
local LIVE = {[S_PREFETCHED] = true, [S_STARTED] = true}

-- Refuse to run, before any change, when a queue key holds the wrong type. spec is
-- {key, type, key, type, ...}; returns an error reply to hand back, or nil.
local function expect_types(spec)
  for i = 1, #spec, 2 do
    local t = redis.call('TYPE', spec[i])['ok']
    if t ~= 'none' and t ~= spec[i + 1] then
      return redis.error_reply('WRONGTYPE_KEY ' .. spec[i] .. ' holds a ' .. t .. ', not a ' .. spec[i + 1]
        .. '; run conveyor doctor --fix to move it aside')
    end
  end
  return nil
end

-- A number, or nil when v is unset, empty or not a finite number.
local function num(v)
  if v == nil or v == '' or v == false then return nil end
  local n = tonumber(v)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then return nil end
  return n
end

local function int(v)
  local n = num(v)
  if n and n == math.floor(n) then return n end
  return nil
end

-- Cut a string to at most n bytes without splitting a UTF-8 character.
local function cut(s, n)
  if #s <= n then return s end
  local b = string.byte(s, n + 1)
  while n > 0 and b >= 128 and b < 192 do
    n = n - 1
    b = string.byte(s, n + 1)
  end
  return string.sub(s, 1, n)
end

-- The attempts list, {} when unset, or nil when it is not a JSON array.
local function decode_list(raw)
  if raw == nil or raw == false or raw == '' then return {} end
  local ok, v = pcall(cjson.decode, raw)
  if ok and type(v) == 'table' and (v[1] ~= nil or next(v) == nil) then return v end
  return nil
end

-- The fields a job must have right to be handled safely (read with HMGET in this order).
local MALFORMED_FIELDS = {F_STATUS, F_ATTEMPTS, F_TIMEOUT, F_RESULT_TTL, F_FAILURE_TTL, F_MAX_DELIVERIES,
  F_UNIQUE_TTL, F_DELIVERIES, F_RETRIES, F_ORPHANED, F_DUE_AT, F_ENQUEUED_AT}
-- field, kind, lower bound, bound inclusive, empty allowed (doctor.py checks the same rules).
local FIELD_RULES = {
  {F_TIMEOUT, 'number', 0, false, true}, {F_RESULT_TTL, 'integer', -1, true, true},
  {F_FAILURE_TTL, 'integer', -1, true, true}, {F_MAX_DELIVERIES, 'integer', 1, true, true},
  {F_UNIQUE_TTL, 'integer', 1, true, true}, {F_DELIVERIES, 'integer', 0, true, false},
  {F_RETRIES, 'integer', 0, true, false}, {F_ORPHANED, 'integer', 0, true, false},
  {F_DUE_AT, 'number', nil, true, true}, {F_ENQUEUED_AT, 'number', nil, true, true},
}

local function strict_number(s)
  if string.find(s, '[%s_xX]') then return nil end  -- tonumber takes hex and spaces; Python does not
  local n = tonumber(s)
  if n == nil or n ~= n then return nil end
  return n
end

-- Why a job cannot be handled safely (its first bad field), or nil. f maps field -> value
-- (a missing field is nil or false).
local function malformed_reason(f)
  local status = f[F_STATUS]
  if not status then return 'status is missing' end
  if not STATUSES[status] then return "status '" .. string.sub(status, 1, 60) .. "' is unknown" end
  local attempts = f[F_ATTEMPTS]
  if attempts then
    local ok, v = pcall(cjson.decode, attempts)
    if not ok then return 'attempts is not valid JSON' end
    if type(v) ~= 'table' or not string.find(attempts, '^%s*%[') then return 'attempts is not a JSON array' end
  end
  for _, r in ipairs(FIELD_RULES) do
    local name, kind, low, inclusive, empty_ok = r[1], r[2], r[3], r[4], r[5]
    local raw = f[name]
    if raw and not (empty_ok and raw == '') then
      local n
      if kind == 'integer' then
        if string.find(raw, '^[%+%-]?%d+$') then n = tonumber(raw) end
      else
        n = strict_number(raw)
      end
      if n == nil or (low and ((inclusive and n < low) or (not inclusive and n <= low))) then
        local bound = low and (' ' .. (inclusive and '>=' or '>') .. ' ' .. low) or ''
        return name .. ' is not ' .. (kind == 'integer' and 'an integer' or 'a number') .. bound
      end
    end
  end
  return nil
end

-- Counters are best effort: a corrupted counter must never abort a transition.
local function bump(key, field, n)
  redis.pcall('HINCRBY', key, field, n)
end

-- Append one attempt (execution ID, start, end, exception) to the job's history. An
-- unreadable history is kept aside in attempts_unreadable and a new one begun.
local function record_attempt(job_key, exc_type, exc_message, ended)
  local f = redis.call('HMGET', job_key, F_ATTEMPTS, F_EXECUTION_ID, F_STARTED_AT, F_WORKER)
  local list = decode_list(f[1])
  if not list then
    redis.call('HSET', job_key, F_ATTEMPTS_UNREADABLE, f[1])
    list = {}
  end
  list[#list + 1] = {n = #list + 1, execution_id = f[2] or '', started_at = f[3] or '', ended_at = ended,
    exc_type = exc_type, exc_message = cut(exc_message, 1000), worker = f[4] or ''}
  redis.call('HSET', job_key, F_ATTEMPTS, cjson.encode(list))
end

-- Leave one wake token, so one blocked worker looks at the queue.
local function wake(wake_key)
  if redis.call('LLEN', wake_key) == 0 then redis.call('LPUSH', wake_key, '1') end
end

-- Keep an ended job for its own TTL, else the default: 0 deletes it now, -1 keeps it
-- forever; a TTL that is not a valid number never deletes anything (kept forever). An
-- ended job no longer holds its unique key. Returns the job's registry score (its
-- expiry), or nil when the job was deleted; callers add the scores with register().
local function retire(job_key, job_id, own_ttl, default_ttl, unique_lock, now)
  if unique_lock and unique_lock ~= '' then
    local holder = redis.pcall('GET', unique_lock)
    if holder == job_id then redis.call('DEL', unique_lock) end
  end
  local ttl = int(own_ttl)
  if ttl == nil or ttl < -1 then ttl = int(default_ttl) end
  if ttl == nil or ttl < -1 then ttl = -1 end
  if ttl == 0 then
    redis.call('DEL', job_key)
    return nil
  elseif ttl < 0 then
    redis.call('PERSIST', job_key)
    return '+inf'
  end
  redis.call('EXPIRE', job_key, ttl)
  return now + ttl
end

-- Add {score, id, ...} to a registry in one call and forget entries whose job expired.
local function register(registry, entries, now)
  if #entries > 0 then redis.call('ZADD', registry, unpack(entries)) end
  redis.call('ZREMRANGEBYSCORE', registry, '-inf', '(' .. now)
end

-- Tell a job's waiters (conveyor.waiting) on its queue's ended channel (keys.QueueKeys.ended_channel,
-- named here from the job key "<base>:job:<id>"): kind "e" it ended or is gone, "p" its progress
-- (extra: time and JSON). Callers announce only jobs a waiter marked (F_WAITED): no PUBLISH for others.
local function announce(job_key, id, kind, extra)
  local channel = string.sub(job_key, 1, #job_key - #id - 4) .. 'ended'
  redis.call('PUBLISH', channel, kind .. ' ' .. id .. (extra and (' ' .. extra) or ''))
end

-- Fail a job for good because it cannot be handled: the bad field stays for inspection.
local function fail_malformed(key, id, reason, failed_key, default_ttl, now, now_str)
  redis.call('HSET', key, F_STATUS, S_FAILED, F_EXC_TYPE, 'MalformedJob', F_EXC_MESSAGE, reason,
    F_EXC_TRACEBACK, '', F_ENDED_AT, now_str)
  local f = redis.call('HMGET', key, F_FAILURE_TTL, F_UNIQUE_LOCK, F_WAITED)
  if f[3] then announce(key, id, 'e') end
  local score = retire(key, id, f[1], default_ttl, f[2], now)
  register(failed_key, score and {score, id} or {}, now)
end

-- A job key that is not a hash: move its value aside (kept) and fail the job in its place.
local function quarantine(key, id, corrupt_key, failed_key, default_ttl, now, now_str)
  local t = redis.call('TYPE', key)['ok']
  redis.call('RENAME', key, corrupt_key)
  local keep = int(default_ttl)
  if keep == nil or keep == 0 then keep = 7 * 24 * 3600 end
  if keep > 0 then redis.call('EXPIRE', corrupt_key, keep) end
  local reason = 'the job key held a ' .. t .. ', not a hash; its value was kept at ' .. corrupt_key
  fail_malformed(key, id, reason, failed_key, default_ttl, now, now_str)
  return reason
end

-- Does execution exec_id hold the lease, given the job's status and execution_id
-- fields? OK, STALE, MISSING, or DUPLICATE when this execution already ended it (a
-- flush retried after a lost reply), so retries are harmless.
local function owner_code(status, current, exec_id)
  if not status then return MISSING end
  if current ~= exec_id then return STALE end
  if not LIVE[status] then return DUPLICATE end
  return OK
end

-- The job's status, execution ID and suspect flag; a key of the wrong type reads as missing.
local function owner_fields(job_key)
  local cur = redis.pcall('HMGET', job_key, F_STATUS, F_EXECUTION_ID, F_SUSPECT)
  if cur.err then return {} end
  return cur
end

-- One command over many members (ZREM, SREM, ZADD score/member pairs): one call per 1,000
-- items instead of one per job (unpack() of a huge table would overflow Lua's stack).
local function call_many(cmd, key, items)
  for i = 1, #items, 1000 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 999, #items)))
  end
end

-- Take a live job off its lease zsets and its worker's claimed set.
local function unlease(id, prefetched_key, leases_key, claimed_key)
  redis.call('ZREM', prefetched_key, id)
  redis.call('ZREM', leases_key, id)
  if claimed_key then redis.pcall('SREM', claimed_key, id) end
end

-- Leave the worker's claimed set unless the job is live under this worker again (a newer
-- execution of the same worker must keep its entry).
local function still_claimed(f_status, f_worker, worker)
  return LIVE[f_status] and f_worker == worker
end

local function unclaim(claimed_key, id, f_status, f_worker, worker)
  if not still_claimed(f_status, f_worker, worker) then redis.call('SREM', claimed_key, id) end
end

-- For an ID taken off a list or zset: vals is a pcall'ed HMGET whose first field is the
-- status. Returns "gone" (no such job: the entry is dropped), "bad" (the job could not be
-- read and was failed as malformed, so the ID still lands somewhere), or nil (readable;
-- the caller looks at the status).
local function settle(key, id, vals, failed_key, default_ttl, corrupt_key, now, now_str)
  if vals.err then
    quarantine(key, id, corrupt_key, failed_key, default_ttl, now, now_str)
    return 'bad'
  end
  if not vals[1] and redis.call('EXISTS', key) == 0 then return 'gone' end
  if not STATUSES[vals[1]] then
    fail_malformed(key, id, malformed_reason({[F_STATUS] = vals[1]}), failed_key, default_ttl, now, now_str)
    return 'bad'
  end
  return nil
end

-- A job whose worker is gone (lease expired, or its pod released) goes back to the recovered
-- list as a suspect: its code may have killed the worker, so it runs one per worker. A started
-- job is charged (orphaned + 1, an attempt "WorkerLost" with attempt_msg) and fails as
-- Abandoned once lost max_deliveries times (why: a few words for that message); a prefetched
-- one never started and is not charged. f is the HMGET of status, worker, max_deliveries,
-- failure_ttl, unique_lock, orphaned, waited. No execution owns the job afterwards, so a late outcome
-- from the lost worker reads as STALE. Returns 'requeued' or 'abandoned'.
local function lose(key, id, f, started, attempt_msg, why, default_max, failed_key, default_ttl,
                    recovered_key, now, now_str)
  if started then
    local lost = (int(f[6]) or 0) + 1
    redis.call('HSET', key, F_ORPHANED, lost)
    record_attempt(key, 'WorkerLost', attempt_msg, now_str)  -- reads the lost execution ID: clear it after
    redis.call('HDEL', key, F_WORKER, F_EXECUTION_ID)
    local max = int(f[3])
    if max == nil or max < 1 then max = int(default_max) or 3 end
    if lost >= max then
      redis.call('HSET', key, F_STATUS, S_FAILED, F_EXC_TYPE, 'Abandoned', F_EXC_TRACEBACK, '',
        F_EXC_MESSAGE, 'abandoned ' .. lost .. ' times: its worker was lost each time (' .. why .. ')',
        F_ENDED_AT, now_str)
      redis.call('HDEL', key, F_SUSPECT)
      if f[7] then announce(key, id, 'e') end
      local score = retire(key, id, f[4], default_ttl, f[5], now)
      register(failed_key, score and {score, id} or {}, now)
      return 'abandoned'
    end
  else
    redis.call('HDEL', key, F_WORKER, F_EXECUTION_ID)
  end
  redis.call('HSET', key, F_STATUS, S_QUEUED, F_SUSPECT, '1')
  redis.call('RPUSH', recovered_key, id)
  return 'requeued'
end

-- Hand leased jobs ({id, execution ID} pairs) back to the head of their queue: not a failure
-- and not a delivery (a started job gets back the delivery its start charged). A suspect goes
-- back to the recovered list. Returns one code per job: OK, STALE (another execution owns it
-- now) or MISSING.
local function hand_back(jobs, prefix, worker, ready_key, recovered_key, prefetched_key, leases_key, claimed_key,
                         wake_key)
  local codes = {}
  local back, suspects = {}, {}
  for _, pair in ipairs(jobs) do
    local id, exec = pair[1], pair[2]
    local key = prefix .. id
    local f = redis.pcall('HMGET', key, F_STATUS, F_EXECUTION_ID, F_WORKER, F_SUSPECT, F_DELIVERIES)
    if f.err then f = {} end
    local code = owner_code(f[1], f[2], exec)
    if code == OK then
      unlease(id, prefetched_key, leases_key, nil)
      if f[1] == S_STARTED then
        redis.call('HSET', key, F_DELIVERIES, math.max(0, (int(f[5]) or 1) - 1))
      end
      redis.call('HSET', key, F_STATUS, S_QUEUED)
      redis.call('HDEL', key, F_WORKER, F_STARTED_AT, F_EXECUTION_ID)
      if f[4] == '1' then suspects[#suspects + 1] = id else back[#back + 1] = id end
    elseif code == DUPLICATE then
      code = STALE  -- it ended already; nothing to hand back
    end
    unclaim(claimed_key, id, code == OK and S_QUEUED or f[1], f[3], worker)
    codes[#codes + 1] = code
  end
  -- LPUSH reverses its arguments: push the last first so the first ends up at the head.
  for i = #back, 1, -1 do redis.call('LPUSH', ready_key, back[i]) end
  for i = #suspects, 1, -1 do redis.call('LPUSH', recovered_key, suspects[i]) end
  if #back + #suspects > 0 then wake(wake_key) end
  return codes
end

-- Jobs ended per 10-second bucket, for the dashboard's chart: fields "<kind>:<bucket>", an
-- hour of them kept (older ones go once a minute; the whole hash after an hour without an
-- ended job). Best effort: a key of the wrong type never stops an outcome from being recorded.
local function count_ended(key, kind, n, now)
  if n == 0 then return end
  local bucket = math.floor(now / 10)
  redis.pcall('HINCRBY', key, kind .. ':' .. bucket, n)
  redis.pcall('EXPIRE', key, 3610)
  if bucket % 6 == 0 and redis.pcall('HSETNX', key, 'trimmed:' .. bucket, 1) == 1 then
    local fields = redis.pcall('HKEYS', key)
    if type(fields) == 'table' and not fields.err then
      for _, f in ipairs(fields) do
        local b = tonumber(string.match(f, ':(%d+)$'))
        if b and b < bucket - 360 then redis.pcall('HDEL', key, f) end
      end
    end
  end
end

-- Dependencies (conveyor/deps.py). A deferred job's pending dependencies are the set
-- <base>deps:<id>, a job's waiting dependents the set <base>dependents:<id>, both of
-- "queue:id" refs; <base> is the queue's key base, the job prefix without "job:" (keys.py).
local function queue_base(job_prefix)
  return string.sub(job_prefix, 1, -5)
end

-- The queue a script runs on, for the release of dependents: its name and keys. ks holds the
-- KEYS of protocol.DEPENDENTS_KEYS in order: ready, wake, deferred, canceled, outbox.
local function dep_queue(job_prefix, ks, failure_ttl)
  local base = queue_base(job_prefix)
  return {base = base, name = string.match(base, '{q:(.-)}:$'), ready = ks[1], wake = ks[2], deferred = ks[3],
    canceled = ks[4], outbox = ks[5], failure_ttl = failure_ttl}
end

-- One dependency of deferred job id (on queue Q) ended: ok true when it finished (or the job runs
-- whatever its dependencies did). Only the call whose SREM takes dep_ref out of the pending set
-- acts, so an outcome delivered twice never releases (or cancels) a job twice. The last one
-- queues the job; a failed one cancels it unless it runs anyway. Returns S_QUEUED, S_CANCELED
-- (true as second value when the canceled job has dependents of its own) or nil.
local function resolve_dep(Q, id, dep_ref, ok, now, now_str)
  local pending = Q.base .. 'deps:' .. id
  if redis.call('SREM', pending, dep_ref) == 0 then return nil end
  local key = Q.base .. 'job:' .. id
  local f = redis.pcall('HMGET', key, F_STATUS, F_ON_DEP_FAILURE, F_FAILURE_TTL, F_UNIQUE_LOCK, F_HAS_DEPENDENTS,
    F_WAITED)
  if f.err or f[1] ~= S_DEFERRED then return nil end
  if not ok and f[2] ~= 'run' then
    redis.call('DEL', pending)
    redis.call('ZREM', Q.deferred, id)
    redis.call('HSET', key, F_STATUS, S_CANCELED, F_ENDED_AT, now_str, F_EXC_TYPE, 'DependencyFailed',
      F_EXC_MESSAGE, 'dependency ' .. dep_ref .. ' failed or was canceled', F_EXC_TRACEBACK, '')
    if f[6] then announce(key, id, 'e') end
    local score = retire(key, id, f[3], Q.failure_ttl, f[4], now)
    register(Q.canceled, score and {score, id} or {}, now)
    return S_CANCELED, f[5] == '1'
  end
  if redis.call('SCARD', pending) == 0 then
    redis.call('ZREM', Q.deferred, id)
    redis.call('HSET', key, F_STATUS, S_QUEUED)
    redis.call('RPUSH', Q.ready, id)
    wake(Q.wake)
    return S_QUEUED
  end
  return nil
end

-- How many finished job IDs a queue's done zset keeps (keys.py), trimmed in steps of 1,000.
local DONE_KEPT = 10000  -- about 1.5 MB of Redis memory per queue (100,000 would be ~14 MB)

-- Job id of queue Q ended (ok: finished): every job waiting for it hears of it. Those of Q are
-- resolved here, in the same script as the ending (a canceled one passes the failure on to its
-- own dependents); those of other queues (other Cluster slots) get an entry in Q's outbox, which
-- the scheduler leader drains (at least once; resolve_dep makes a repeat harmless).
local function release_dependents(Q, id, ok, now, now_str)
  local work = {{id, ok}}
  local i = 1
  while work[i] do
    local ended, good = work[i][1], work[i][2]
    i = i + 1
    local set = Q.base .. 'dependents:' .. ended
    local refs = redis.call('SMEMBERS', set)
    redis.call('DEL', set)
    local from = Q.name .. ':' .. ended
    local remote = false
    for _, ref in ipairs(refs) do
      local q, did = string.match(ref, '^([^:]+):(.+)$')
      if q == Q.name then
        local outcome, more = resolve_dep(Q, did, from, good, now, now_str)
        if more then work[#work + 1] = {did, false} end
      elseif q then
        redis.call('RPUSH', Q.outbox, (good and '1' or '0') .. ' ' .. ref .. ' ' .. from)
        remote = true
      end
    end
    -- Wakes the scheduler leader: it listens on the channel named like the scheduled zset,
    -- which keys.py names after the status.
    if remote then redis.call('PUBLISH', Q.base .. S_SCHEDULED, '0') end
  end
end

-- release_dependents for jobs that ended in one script, each on its own: a key of the wrong
-- type stops that job's release without undoing the endings or the batch-mates' releases; the
-- scheduler's periodic check of deferred jobs (conveyor/deps.py) releases what it missed.
local function release_all(Q, ids, ok, now, now_str)
  for _, id in ipairs(ids) do pcall(release_dependents, Q, id, ok, now, now_str) end
end

-- enqueue.lua, deferred: the first dependency on this queue (Q) that neither is in the batch,
-- exists, nor finished recently (done zset), as its ref; nil when there is none.
local function unknown_local(Q, done_key, argv, first, nf, deps_at, deps_val)
  local batch = {}
  for base = first, #argv, nf do batch[argv[base]] = true end
  for base = first, #argv, nf do
    local deps = deps_at and argv[base + deps_at] or deps_val or ''
    for ref in string.gmatch(deps, '%S+') do
      local q, did = string.match(ref, '^([^:]+):(.+)$')
      if q == Q.name and not batch[did] and redis.call('EXISTS', Q.base .. 'job:' .. did) == 0
          and not redis.call('ZSCORE', done_key, did) then
        return ref
      end
    end
  end
  return nil
end

-- enqueue.lua, deferred: link job id to its dependencies on this queue in the same step as its
-- write. An unended one gets id among its dependents; an ended one resolves at once (finished,
-- or gone but in the done zset: met; else failed). Returns true when refs name another queue
-- (the client links those, conveyor/deps.py).
local function link_local(Q, done_key, id, refs, now, now_str)
  local remote = false
  for _, ref in ipairs(refs) do
    local q, did = string.match(ref, '^([^:]+):(.+)$')
    if q ~= Q.name then
      remote = true
    else
      local key = Q.base .. 'job:' .. did
      local st = redis.pcall('HGET', key, F_STATUS)
      if type(st) == 'string' and STATUSES[st] and st ~= S_FINISHED and st ~= S_FAILED and st ~= S_CANCELED then
        redis.call('SADD', Q.base .. 'dependents:' .. did, Q.name .. ':' .. id)
        redis.call('HSET', key, F_HAS_DEPENDENTS, '1')
      else
        local ok = st == S_FINISHED or (type(st) ~= 'string' and type(redis.pcall('ZSCORE', done_key, did)) == 'string')
        local outcome, more = resolve_dep(Q, id, ref, ok, now, now_str)
        if more then release_dependents(Q, id, false, now, now_str) end
      end
    end
  end
  return remote
end
