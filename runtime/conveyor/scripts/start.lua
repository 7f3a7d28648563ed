#!lua flags=allow-oom
-- start: prefetched jobs whose code the worker starts now; each is charged a delivery.
-- KEYS[1] prefetched zset   KEYS[2] leases zset
-- ARGV[1] job key prefix   ARGV[2] lease ms; then per job two values: id, execution ID
-- Returns one code per job: OK, DUPLICATE (this execution started it already), STALE
--   (another execution owns it, or it was canceled or recovered meanwhile) or MISSING.
local err = expect_types({KEYS[1], 'zset', KEYS[2], 'zset'})
if err then return err end
local prefix = ARGV[1]
local _, now_str = now_s()
local deadline = now_ms() + tonumber(ARGV[2])
local codes, started, leased = {}, {}, {}
for i = 3, #ARGV, 2 do
  local id, exec = ARGV[i], ARGV[i + 1]
  local key = prefix .. id
  local f = redis.pcall('HMGET', key, F_STATUS, F_EXECUTION_ID, F_DELIVERIES)
  local code
  if f.err or not f[1] then
    code = MISSING
  elseif f[2] ~= exec then
    code = STALE
  elseif f[1] == S_STARTED then
    code = DUPLICATE
  elseif f[1] ~= S_PREFETCHED then
    code = STALE
  else
    code = OK
    redis.call('HSET', key, F_STATUS, S_STARTED, F_STARTED_AT, now_str, F_DELIVERIES, (int(f[3]) or 0) + 1)
    started[#started + 1] = id
    leased[#leased + 1] = deadline
    leased[#leased + 1] = id
  end
  codes[#codes + 1] = code
end
call_many('ZREM', KEYS[1], started)
call_many('ZADD', KEYS[2], leased)
return codes
