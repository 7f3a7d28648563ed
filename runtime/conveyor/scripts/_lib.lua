-- Shared helpers, prepended to every script by scripts/__init__.py (after the
-- return-code constants, which are generated from conveyor/errors.py).

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

-- Append one attempt (execution ID, start, end, exception) to the job's history.
local function record_attempt(job_key, exc_type, exc_message, ended)
  local f = redis.call('HMGET', job_key, 'attempts', 'execution_id', 'started_at')
  local list = f[1] and cjson.decode(f[1]) or {}
  list[#list + 1] = {n = #list + 1, execution_id = f[2] or '', started_at = f[3] or '', ended_at = ended,
    exc_type = exc_type, exc_message = string.sub(exc_message, 1, 1000)}
  redis.call('HSET', job_key, 'attempts', cjson.encode(list))
end

-- Leave one wake token, so one blocked worker looks at the queue.
local function wake(wake_key)
  if redis.call('LLEN', wake_key) == 0 then redis.call('LPUSH', wake_key, '1') end
end

-- Keep an ended job for ttl seconds: 0 deletes it now, -1 keeps it forever. An ended
-- job no longer holds its unique key. Returns the job's registry score (its expiry),
-- or nil when the job was deleted; callers add the scores with register().
local function retire(job_key, job_id, ttl, unique_lock, now)
  if unique_lock and redis.call('GET', unique_lock) == job_id then redis.call('DEL', unique_lock) end
  ttl = tonumber(ttl) or 0
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

-- Does execution exec_id hold the lease, given the job's status and execution_id
-- fields? OK, STALE, MISSING, or DUPLICATE when this execution already ended it (a
-- flush retried after a lost reply), so retries are harmless.
local function owner_code(status, current, exec_id)
  if not status then return MISSING end
  if current ~= exec_id then return STALE end
  if status ~= 'started' then return DUPLICATE end
  return OK
end

local function check_owner(job_key, exec_id)
  local cur = redis.call('HMGET', job_key, 'status', 'execution_id')
  return owner_code(cur[1], cur[2], exec_id)
end
