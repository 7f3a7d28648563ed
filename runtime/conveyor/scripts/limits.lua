#!lua flags=allow-oom
-- limits: set or clear a queue's flow control (conveyor queue set, Queue.set_limits, a JobQueue's
-- workers at start). Fields not named keep their value; the token bucket is kept across changes
-- (claim.lua clamps it to the burst), so a rollout that writes the same limits grants no extra burst.
-- Allowed on a full Redis (allow-oom): throttling is how one relieves an overloaded downstream.
-- KEYS[1] limits hash
-- ARGV pairs: a limits field (rate, period_ms, burst, max_concurrency), its value ("" clears it)
-- Returns the hash as HGETALL gives it (empty: the queue has no limits, the key is gone).
local err = expect_types({KEYS[1], 'hash'})
if err then return err end
local settable = {[L_RATE] = true, [L_PERIOD_MS] = true, [L_BURST] = true, [L_MAX_CONCURRENCY] = true}
for i = 1, #ARGV, 2 do
  if not settable[ARGV[i]] then return redis.error_reply('ERR not a limit: ' .. ARGV[i]) end
end
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
if redis.call('HEXISTS', KEYS[1], L_RATE) == 0 then
  redis.call('HDEL', KEYS[1], L_PERIOD_MS, L_BURST, L_TOKENS, L_REFILLED_MS)  -- no rate: no bucket
end
if redis.call('HEXISTS', KEYS[1], L_RATE) == 0 and redis.call('HEXISTS', KEYS[1], L_MAX_CONCURRENCY) == 0 then
  redis.call('DEL', KEYS[1])  -- unlimited: claim.lua reads nothing
end
return redis.call('HGETALL', KEYS[1])
