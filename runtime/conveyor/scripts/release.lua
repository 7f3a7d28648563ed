#!lua flags=allow-oom
-- release: hand leased jobs back to the head of their queue (shutdown, or claimed but
-- never started). Not a failure and not a delivery: a started job gets back the delivery
-- its start charged; a prefetched one was never charged. A suspect goes back to the
-- recovered list, so it still runs apart from the others.
-- KEYS[1] ready list   KEYS[2] recovered list   KEYS[3] prefetched zset   KEYS[4] leases zset
-- KEYS[5] the worker's claimed set   KEYS[6] wake list
-- ARGV[1] job key prefix   ARGV[2] worker ID, then per job two values: id, execution ID
-- Returns one code per job: OK, STALE (another execution owns it now) or MISSING.
local err = expect_types({KEYS[1], 'list', KEYS[2], 'list', KEYS[3], 'zset', KEYS[4], 'zset',
  KEYS[5], 'set', KEYS[6], 'list'})
if err then return err end
local prefix, worker = ARGV[1], ARGV[2]
local codes = {}
local back, suspects = {}, {}
for i = 3, #ARGV, 2 do
  local id, exec = ARGV[i], ARGV[i + 1]
  local key = prefix .. id
  local f = redis.pcall('HMGET', key, 'status', 'execution_id', 'worker', 'suspect', 'deliveries')
  if f.err then f = {} end
  local code = owner_code(f[1], f[2], exec)
  if code == OK then
    unlease(id, KEYS[3], KEYS[4], nil)
    if f[1] == 'started' then
      redis.call('HSET', key, 'deliveries', math.max(0, (int(f[5]) or 1) - 1))
    end
    redis.call('HSET', key, 'status', 'queued')
    redis.call('HDEL', key, 'worker', 'started_at', 'execution_id')
    if f[4] == '1' then suspects[#suspects + 1] = id else back[#back + 1] = id end
  elseif code == DUPLICATE then
    code = STALE  -- it ended already; nothing to hand back
  end
  unclaim(KEYS[5], id, code == OK and 'queued' or f[1], f[3], worker)
  codes[#codes + 1] = code
end
-- LPUSH reverses its arguments: push the last first so the first ends up at the head.
for i = #back, 1, -1 do redis.call('LPUSH', KEYS[1], back[i]) end
for i = #suspects, 1, -1 do redis.call('LPUSH', KEYS[2], suspects[i]) end
if #back + #suspects > 0 then wake(KEYS[6]) end
return codes
