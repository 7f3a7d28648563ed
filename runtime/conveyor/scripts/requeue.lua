#!lua flags=allow-oom
-- requeue: put failed jobs back on their queue with a fresh retry budget. Their last error
-- (exc_type, exc_message, exc_traceback) is cleared: it no longer describes the job. Its
-- history stays in attempts, where this adds the error if it is not there yet (a job failed
-- as malformed before it ran has no attempt).
-- KEYS[1] ready list   KEYS[2] failed zset   KEYS[3] wake list
-- (Allowed on a full Redis: it moves a job, it does not add one.)
-- ARGV[1] job key prefix, then job IDs
-- Returns one code per job: OK, MISSING, or WRONG_STATE (it is not failed).
local err = expect_types({KEYS[1], 'list', KEYS[2], 'zset', KEYS[3], 'list'})
if err then return err end
local prefix = ARGV[1]
local codes = {}
local moved = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local key = prefix .. id
  local status = redis.pcall('HGET', key, F_STATUS)
  if type(status) ~= 'string' then
    codes[#codes + 1] = MISSING
  elseif status ~= S_FAILED then
    codes[#codes + 1] = WRONG_STATE
  else
    -- fail.lua and a lost worker record the attempt that ended the job, ending when it did.
    local e = redis.call('HMGET', key, F_EXC_TYPE, F_EXC_MESSAGE, F_ENDED_AT, F_ATTEMPTS)
    if e[1] and e[1] ~= '' then
      local list = decode_list(e[4])
      local last = list and list[#list]
      if not (last and last.ended_at == e[3]) then record_attempt(key, e[1], e[2] or '', e[3] or '') end
    end
    redis.call('ZREM', KEYS[2], id)
    redis.call('PERSIST', key)
    redis.call('HSET', key, F_STATUS, S_QUEUED, F_RETRIES, 0, F_ORPHANED, 0)
    redis.call('HDEL', key, F_SUSPECT)
    -- Take its unique key back, unless another live job holds it now.
    local u = redis.call('HMGET', key, F_UNIQUE_LOCK, F_UNIQUE_TTL)
    if u[1] and u[1] ~= '' then
      local holder = redis.pcall('GET', u[1])
      if type(holder) ~= 'string' or redis.call('EXISTS', prefix .. holder) == 0 then
        local ttl = int(u[2])
        redis.call('SET', u[1], id, 'EX', (ttl and ttl > 0) and ttl or 3600)
      end
    end
    redis.call('HDEL', key, F_ENDED_AT, F_WORKER, F_EXC_TYPE, F_EXC_MESSAGE, F_EXC_TRACEBACK)
    redis.call('RPUSH', KEYS[1], id)
    moved = moved + 1
    codes[#codes + 1] = OK
  end
end
if moved > 0 then wake(KEYS[3]) end
return codes
