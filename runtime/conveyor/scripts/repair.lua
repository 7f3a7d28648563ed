#!lua flags=allow-oom
-- repair: conveyor doctor --fix. Applies findings of one queue, each only if it still holds:
-- the fleet keeps running while doctor reads, so every finding is checked again here, and one
-- that no longer holds (the job moved on, someone fixed it) is skipped, never "fixed".
-- KEYS[1] ready   KEYS[2] recovered   KEYS[3] wake   KEYS[4] prefetched   KEYS[5] leases
-- KEYS[6] scheduled   KEYS[7] finished   KEYS[8] failed   KEYS[9] canceled
-- ARGV[1] the queue's key prefix ("conveyor:{q:NAME}:"; job, claimed and corrupt keys hang off it)
-- ARGV[2] failure TTL (s) for malformed jobs and keys renamed aside   ARGV[3] channel for due times
-- then per finding four values: kind, subject, place or status, extra
--   wrong_type_key    key name after the prefix ("ready", "claimed:w"), expected type, -
--   expired_entry     job ID, registry, -             dangling_entry   job ID, place, -
--   malformed_job     job ID, -, -                    unlisted_job     job ID, status seen, lease deadline (ms)
--   duplicate_entry   job ID, -, -                    misplaced_entry  job ID, place, -
--   stale_claimed_set job ID, "claimed:<worker>", -
-- Returns one code per finding: OK (fixed) or WRONG_STATE (no longer holds: left alone).
local base, ttl, channel = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local K = {ready = KEYS[1], recovered = KEYS[2], wake = KEYS[3], prefetched = KEYS[4], leases = KEYS[5],
  scheduled = KEYS[6], finished = KEYS[7], failed = KEYS[8], canceled = KEYS[9]}
local TYPES = {ready = 'list', recovered = 'list', wake = 'list', prefetched = 'zset', leases = 'zset',
  scheduled = 'zset', finished = 'zset', failed = 'zset', canceled = 'zset'}
local REGISTRY = {finished = true, failed = true, canceled = true}
-- Where a job of each status is listed. The zsets of prefetched, scheduled and ended jobs are
-- named after that status (conveyor/keys.py), so there a status doubles as the place's name.
local HOME = {[S_QUEUED] = {'ready', 'recovered'}, [S_SCHEDULED] = {S_SCHEDULED}, [S_PREFETCHED] = {S_PREFETCHED},
  [S_STARTED] = {'leases'}, [S_FINISHED] = {S_FINISHED}, [S_FAILED] = {S_FAILED}, [S_CANCELED] = {S_CANCELED},
  [S_DEFERRED] = {}}
local FIELDS = {F_STATUS, F_WORKER, F_EXC_TYPE, F_ATTEMPTS, F_TIMEOUT, F_RESULT_TTL, F_FAILURE_TTL,
  F_MAX_DELIVERIES, F_UNIQUE_TTL, F_DELIVERIES, F_RETRIES, F_ORPHANED, F_DUE_AT, F_ENQUEUED_AT, F_UNIQUE_LOCK}
local now, now_str = now_s()

local function type_of(key) return redis.call('TYPE', key).ok end
local function usable(key, want)
  local have = type_of(key)
  return have == want or have == 'none'
end
-- Every write below goes to these keys: a wrong-typed one would abort the script half way.
local function queue_usable()
  for name, want in pairs(TYPES) do
    if not usable(K[name], want) then return false end
  end
  return true
end
local function place_key(place)
  if K[place] then return K[place] end
  if string.sub(place, 1, 8) == 'claimed:' then return base .. place end
  return nil
end

local function read_job(key)
  local vals = redis.call('HMGET', key, unpack(FIELDS))
  local f = {}
  for i, name in ipairs(FIELDS) do f[name] = vals[i] or nil end
  return f
end

-- Why the job is malformed (the first bad field), or nil: _lib.lua's rule, doctor.field_problem in Python.
local problem = malformed_reason

local function quarantined(f) return f[F_STATUS] == S_FAILED and f[F_EXC_TYPE] == 'MalformedJob' end

-- A sound job hash (or one already failed as malformed), or nil.
local function sound_job(id)
  local key = base .. 'job:' .. id
  if type_of(key) ~= 'hash' then return nil end
  local f = read_job(key)
  if problem(f) and not quarantined(f) then return nil end
  return f
end

-- Is the entry there at all (raw), and does it count as listing the job (live)?
local function present(place, id)
  local key = place_key(place)
  if TYPES[place] == 'list' then return redis.call('LPOS', key, id) ~= false end
  if TYPES[place] == 'zset' then return redis.call('ZSCORE', key, id) ~= false end
  return usable(key, 'set') and redis.call('SISMEMBER', key, id) == 1
end
local function listed(place, id)
  if REGISTRY[place] then
    local score = redis.call('ZSCORE', K[place], id)
    return score ~= false and tonumber(score) > now
  end
  return present(place, id)
end
local function remove(place, id)
  local key = place_key(place)
  if TYPES[place] == 'list' then redis.call('LREM', key, 0, id)
  elseif TYPES[place] == 'zset' then redis.call('ZREM', key, id)
  elseif usable(key, 'set') then redis.call('SREM', key, id) end
end
local function at_home(status, id)
  for _, p in ipairs(HOME[status]) do
    if listed(p, id) then return true end
  end
  return false
end
local function allowed(f, place)
  for _, p in ipairs(HOME[f[F_STATUS]]) do
    if p == place then return true end
  end
  return LIVE[f[F_STATUS]] and f[F_WORKER] ~= nil and place == 'claimed:' .. f[F_WORKER]
end

-- Rename a key aside (kept for inspection, with the failure TTL); never over an earlier one.
local function set_aside(key, name)
  local aside = base .. 'corrupt:' .. name
  if redis.call('EXISTS', aside) == 1 then aside = aside .. ':' .. now_str end
  redis.call('RENAME', key, aside)
  redis.call('EXPIRE', aside, ttl)
end

local fix = {}

fix.wrong_type_key = function(name, want)
  local key = base .. name
  local have = type_of(key)
  if have == 'none' or have == want then return WRONG_STATE end
  set_aside(key, name)
  return OK
end

fix.expired_entry = function(id, registry)
  if not REGISTRY[registry] or not usable(K[registry], 'zset') then return WRONG_STATE end
  local score = redis.call('ZSCORE', K[registry], id)
  if not score or tonumber(score) > now then return WRONG_STATE end
  redis.call('ZREM', K[registry], id)
  return OK
end

fix.dangling_entry = function(id, place)
  if not place_key(place) or not queue_usable() then return WRONG_STATE end
  if redis.call('EXISTS', base .. 'job:' .. id) == 1 or not present(place, id) then return WRONG_STATE end
  remove(place, id)
  return OK
end

fix.malformed_job = function(id)
  local key = base .. 'job:' .. id
  local have = type_of(key)
  if have == 'none' or not queue_usable() then return WRONG_STATE end
  local message, worker
  if have ~= 'hash' then
    message = 'the job key holds a ' .. have .. ', not a hash'
    set_aside(key, id)
  else
    local f = read_job(key)
    message = problem(f)
    -- A running job's worker finishes it; a held one is the lease reaper's.
    if not message or quarantined(f) or LIVE[f[F_STATUS]] then return WRONG_STATE end
    worker = f[F_WORKER]
    local lock = f[F_UNIQUE_LOCK]
    if lock and string.sub(lock, 1, #base) == base and usable(lock, 'string') and redis.call('GET', lock) == id then
      redis.call('DEL', lock)
    end
  end
  redis.call('HSET', key, F_STATUS, S_FAILED, F_EXC_TYPE, 'MalformedJob', F_EXC_MESSAGE, message,
    F_EXC_TRACEBACK, '', F_ENDED_AT, now_str)
  redis.call('EXPIRE', key, ttl)
  for place, _ in pairs(TYPES) do
    if place ~= 'wake' and K[place] ~= K.failed then remove(place, id) end
  end
  if worker then remove('claimed:' .. worker, id) end
  redis.call('ZADD', K.failed, now + ttl, id)
  return OK
end

fix.unlisted_job = function(id, seen, deadline)
  local f = sound_job(id)
  if not f or f[F_STATUS] ~= seen or not queue_usable() then return WRONG_STATE end
  local status = f[F_STATUS]
  if status == S_PREFETCHED or status == S_STARTED then
    local changed = false
    local zset = K[HOME[status][1]]
    if not redis.call('ZSCORE', zset, id) then
      redis.call('ZADD', zset, deadline, id)
      changed = true
    end
    if f[F_WORKER] and f[F_WORKER] ~= '' and not present('claimed:' .. f[F_WORKER], id)
        and usable(base .. 'claimed:' .. f[F_WORKER], 'set') then
      redis.call('SADD', base .. 'claimed:' .. f[F_WORKER], id)
      changed = true
    end
    return changed and OK or WRONG_STATE
  end
  if at_home(status, id) then return WRONG_STATE end
  if status == S_QUEUED then
    redis.call('RPUSH', K.ready, id)
    wake(K.wake)
  elseif status == S_SCHEDULED then
    local due = (f[F_DUE_AT] and f[F_DUE_AT] ~= '') and f[F_DUE_AT] or tostring(now_ms())
    redis.call('ZADD', K.scheduled, due, id)
    redis.call('PUBLISH', channel, due)
  else
    local left = redis.call('PTTL', base .. 'job:' .. id)
    redis.call('ZADD', K[status], left < 0 and '+inf' or now + left / 1000, id)
  end
  return OK
end

fix.duplicate_entry = function(id)
  local f = sound_job(id)
  if not f or f[F_STATUS] ~= S_QUEUED or not queue_usable() then return WRONG_STATE end
  local r = #redis.call('LPOS', K.ready, id, 'COUNT', 0)
  local v = #redis.call('LPOS', K.recovered, id, 'COUNT', 0)
  if r + v <= 1 then return WRONG_STATE end
  -- Keep a recovered entry (its job is a suspect); else the ready entry nearest the head.
  if v > 0 then
    redis.call('LREM', K.ready, 0, id)
    if v > 1 then redis.call('LREM', K.recovered, 1 - v, id) end
  else
    redis.call('LREM', K.ready, 1 - r, id)
  end
  return OK
end

fix.misplaced_entry = function(id, place)
  local f = sound_job(id)
  if not f or not place_key(place) or not queue_usable() then return WRONG_STATE end
  -- Never remove what may be the job's only trace.
  if allowed(f, place) or not at_home(f[F_STATUS], id) or not present(place, id) then return WRONG_STATE end
  remove(place, id)
  return OK
end

fix.stale_claimed_set = function(id, place)
  if string.sub(place, 1, 8) ~= 'claimed:' or not present(place, id) then return WRONG_STATE end
  local key = base .. 'job:' .. id
  if type_of(key) == 'hash' then
    local f = redis.call('HMGET', key, F_STATUS, F_WORKER)
    if (f[1] == S_PREFETCHED or f[1] == S_STARTED) and f[2] and place == 'claimed:' .. f[2] then return WRONG_STATE end
  end
  redis.call('SREM', base .. place, id)  -- the set goes when its last member does
  return OK
end

local codes = {}
for i = 4, #ARGV, 4 do
  local handler = fix[ARGV[i]]
  codes[#codes + 1] = handler and handler(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]) or WRONG_STATE
end
return codes
