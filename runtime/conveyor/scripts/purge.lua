#!lua flags=allow-oom
-- purge: delete every waiting job of a queue (ready and recovered; scheduled too if asked).
-- Prefetched, started, finished and failed jobs are left alone. Waited jobs are announced (gone).
-- KEYS[1] ready list   KEYS[2] scheduled zset   KEYS[3] recovered list
-- ARGV[1] job key prefix   ARGV[2] "1" to purge scheduled jobs too
-- Returns {ready jobs deleted, scheduled jobs deleted}.
local err = expect_types({KEYS[1], 'list', KEYS[2], 'zset', KEYS[3], 'list'})
if err then return err end
local prefix = ARGV[1]
local function drop(ids)
  local n = 0
  for _, id in ipairs(ids) do
    local key = prefix .. id
    local f = redis.pcall('HMGET', key, F_STATUS, F_UNIQUE_LOCK, F_WAITED)
    -- Only waiting jobs: a stale entry of a job that moved on is dropped, the job kept.
    if not f.err and (f[1] == S_QUEUED or f[1] == S_SCHEDULED) then
      if f[2] and redis.pcall('GET', f[2]) == id then redis.call('DEL', f[2]) end
      redis.call('DEL', key)
      if f[3] then announce(key, id, 'e') end  -- gone: its waiters must not wait out their timeout
      n = n + 1
    end
  end
  return n
end
local ready = drop(redis.call('LRANGE', KEYS[1], 0, -1)) + drop(redis.call('LRANGE', KEYS[3], 0, -1))
redis.call('DEL', KEYS[1], KEYS[3])
local scheduled = 0
if ARGV[2] == '1' then
  scheduled = drop(redis.call('ZRANGE', KEYS[2], 0, -1))
  redis.call('DEL', KEYS[2])
end
return {ready, scheduled}
