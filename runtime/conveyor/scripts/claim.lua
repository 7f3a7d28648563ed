-- claim: lease up to N ready jobs to one worker, each under a new execution ID.
-- KEYS[1] ready list   KEYS[2] leases zset   KEYS[3] the worker's claimed set
-- KEYS[4] wake list    KEYS[5] execution ID counter
-- ARGV[1] job key prefix   ARGV[2] N   ARGV[3] lease ms   ARGV[4] worker ID
-- ARGV[5 ..] names of the job fields to return
-- Returns the number of IDs left on the ready list, then per claimed job: id, execution
-- ID, and the requested fields. IDs whose job hash is gone or not queued (deleted,
-- canceled) are dropped, so fewer jobs than asked does not mean the list is empty.
local prefix, n, lease_ms, worker = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local fields = {'status', 'deliveries'}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end

local out = {0}
local ids = redis.call('LPOP', KEYS[1], n)
if ids then
  local _, now_str = now_s()
  local deadline = now_ms() + lease_ms
  -- One counter bump for the batch; execution IDs are consecutive numbers.
  local seq = redis.call('INCRBY', KEYS[5], #ids) - #ids
  local leases, claimed = {}, {}
  for _, id in ipairs(ids) do
    local key = prefix .. id
    local vals = redis.call('HMGET', key, unpack(fields))
    if vals[1] == 'queued' then
      seq = seq + 1
      local exec = tostring(seq)
      local deliveries = (tonumber(vals[2]) or 0) + 1
      redis.call('HSET', key, 'status', 'started', 'execution_id', exec, 'worker', worker,
        'started_at', now_str, 'deliveries', deliveries)
      leases[#leases + 1] = deadline
      leases[#leases + 1] = id
      claimed[#claimed + 1] = id
      out[#out + 1] = id
      out[#out + 1] = exec
      for i = 3, #fields do
        out[#out + 1] = fields[i] == 'deliveries' and tostring(deliveries) or vals[i]
      end
    end
  end
  if #claimed > 0 then
    redis.call('ZADD', KEYS[2], unpack(leases))
    redis.call('SADD', KEYS[3], unpack(claimed))
  end
end
-- Pass the baton: if work remains, leave one token so another idle worker wakes.
out[1] = redis.call('LLEN', KEYS[1])
if out[1] > 0 then wake(KEYS[4]) end
return out
