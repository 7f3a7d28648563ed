#!lua flags=no-writes,allow-oom
-- failed_types: which of a stretch of the failed registry (newest first) failed with one
-- exception type. Read-only; the dashboard calls it in stretches of a few thousand, so Redis
-- is never held for long.
-- KEYS[1] failed zset
-- ARGV[1] job key prefix   ARGV[2] now, in seconds (entries scored before it have expired)
-- ARGV[3] offset   ARGV[4] how many entries to look at   ARGV[5] the exception type
-- Returns {entries looked at, matching IDs...}.
local err = expect_types({KEYS[1], 'zset'})
if err then return err end
local prefix, exc_type = ARGV[1], ARGV[5]
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', ARGV[2], 'LIMIT', tonumber(ARGV[3]), tonumber(ARGV[4]))
local out = {#ids}
for _, id in ipairs(ids) do
  if redis.pcall('HGET', prefix .. id, F_EXC_TYPE) == exc_type then out[#out + 1] = id end
end
return out
