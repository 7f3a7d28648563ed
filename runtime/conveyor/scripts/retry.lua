-- retry: a failed execution will run again, at once (tail of the ready list) or when due.
-- The job keeps its ID; the attempt is recorded; the unique key stays held.
-- KEYS[1] leases zset   KEYS[2] the worker's claimed set   KEYS[3] ready list
-- KEYS[4] scheduled zset   KEYS[5] wake list
-- ARGV[1] job key prefix   ARGV[2] channel to publish due times on
-- then per job six values: id, execution ID, exception type, message, traceback, delay in ms
-- Returns one code per job: OK, STALE, MISSING or DUPLICATE.
local prefix, channel = ARGV[1], ARGV[2]
local _, now_str = now_s()
local now = now_ms()
local codes = {}
local woke = false
for i = 3, #ARGV, 6 do
  local id, exec, delay = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 5])
  local key = prefix .. id
  redis.call('SREM', KEYS[2], id)
  local code = check_owner(key, exec)
  if code == OK then
    redis.call('ZREM', KEYS[1], id)
    record_attempt(key, ARGV[i + 2], ARGV[i + 3], now_str)
    redis.call('HSET', key, 'exc_type', ARGV[i + 2], 'exc_message', ARGV[i + 3], 'exc_traceback', ARGV[i + 4])
    redis.call('HINCRBY', key, 'retries', 1)
    redis.call('HDEL', key, 'worker')
    if delay <= 0 then
      redis.call('HSET', key, 'status', 'queued')
      redis.call('RPUSH', KEYS[3], id)
      woke = true
    else
      local due = now + delay
      redis.call('HSET', key, 'status', 'scheduled', 'due_at', due)
      redis.call('ZADD', KEYS[4], due, id)
      redis.call('PUBLISH', channel, due)
    end
    -- The status is no longer 'started': a repeat of this call must see DUPLICATE, not
    -- a second retry. check_owner does that by status; keep the execution ID as is.
  end
  codes[#codes + 1] = code
end
if woke then wake(KEYS[5]) end
return codes
