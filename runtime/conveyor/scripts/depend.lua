#!lua flags=allow-oom
-- depend: register jobs (of any queue) as waiting for jobs of this queue, unless those ended.
-- Run by the client after it wrote the waiting jobs deferred, and again by the scheduler for a
-- deferred job not confirmed in time (conveyor/deps.py): registering twice is harmless.
-- KEYS[1] done zset (the last finished jobs: a finished dependency whose hash expired)
-- ARGV[1] job key prefix; then pairs: dependency ID, dependent ref ("queue:id")
-- Returns one outcome per pair: "P" registered (the dependency has not ended: its end releases
-- the dependent), "1" it finished, "0" it failed, was canceled, or is gone without finishing.
-- (Allowed on a full Redis: it adds a member to a set, so that deferred jobs can go on.)
local prefix = ARGV[1]
local base = queue_base(prefix)
local out = {}
for i = 2, #ARGV, 2 do
  local id, dependent = ARGV[i], ARGV[i + 1]
  local key = prefix .. id
  local status = redis.pcall('HGET', key, F_STATUS)
  if type(status) ~= 'string' then
    local score = redis.pcall('ZSCORE', KEYS[1], id)
    out[#out + 1] = type(score) == 'string' and '1' or '0'
  elseif status == S_FINISHED then
    out[#out + 1] = '1'
  elseif status == S_FAILED or status == S_CANCELED or not STATUSES[status] then
    out[#out + 1] = '0'
  else
    redis.call('SADD', base .. 'dependents:' .. id, dependent)
    redis.call('HSET', key, F_HAS_DEPENDENTS, '1')
    out[#out + 1] = 'P'
  end
end
return out
