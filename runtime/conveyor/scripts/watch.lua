#!lua flags=allow-oom
-- watch: a waiter (conveyor.waiting), subscribed to the queue's ended channel first, marks the
-- jobs it waits on (F_WAITED) and reads them in the same step: a job that ended before is
-- seen here, one that ends after is announced by the step that ends it. Ended jobs are not
-- marked. (Allowed on a full Redis: a waiter must learn the outcome of work already there.)
-- KEYS[1] finished zset (not touched: it names the queue's slot on a Cluster)
-- ARGV[1] job key prefix, then job IDs
-- Returns per job its hash as HGETALL gives it: {} when there is no such job, or its key
-- holds no hash.
local prefix = ARGV[1]
local ENDED = {[S_FINISHED] = true, [S_FAILED] = true, [S_CANCELED] = true}
local out = {}
for i = 2, #ARGV do
  local key = prefix .. ARGV[i]
  local status = redis.pcall('HGET', key, F_STATUS)
  if type(status) ~= 'string' then
    out[#out + 1] = {}
  else
    if not ENDED[status] then redis.call('HSET', key, F_WAITED, '1') end
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
return out
