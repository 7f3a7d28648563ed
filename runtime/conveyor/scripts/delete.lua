#!lua flags=allow-oom
-- delete: remove ended jobs (finished, failed or canceled) for good: their hash, their entry
-- in their registry, and the unique key a job still holds. A waiting or running job is left
-- alone (cancel or stop it first), so a delete never races a worker over a live job.
-- KEYS[1] finished zset   KEYS[2] failed zset   KEYS[3] canceled zset
-- (Allowed on a full Redis: it only frees memory.)
-- ARGV[1] job key prefix, then job IDs
-- Returns one code per job: OK, MISSING, or WRONG_STATE (it has not ended).
local err = expect_types({KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'zset'})
if err then return err end
local prefix = ARGV[1]
local registry = {[S_FINISHED] = KEYS[1], [S_FAILED] = KEYS[2], [S_CANCELED] = KEYS[3]}
local codes = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local key = prefix .. id
  local f = redis.pcall('HMGET', key, F_STATUS, F_UNIQUE_LOCK)
  if f.err or not f[1] then
    codes[#codes + 1] = MISSING
  elseif not registry[f[1]] then
    codes[#codes + 1] = WRONG_STATE
  else
    redis.call('ZREM', registry[f[1]], id)
    if f[2] and redis.pcall('GET', f[2]) == id then redis.call('DEL', f[2]) end
    redis.call('DEL', key)
    codes[#codes + 1] = OK
  end
end
return codes
