#!lua flags=allow-oom
-- progress: store what running jobs reported (current_job().set_progress / set_meta; the
-- latest value wins), if their execution still owns them; a waited job's waiters get its
-- progress at once on the queue's ended channel.
-- KEYS[1] leases zset (not touched: it names the queue's slot on a Cluster)
-- ARGV[1] job key prefix, then per job four values: id, execution ID, progress JSON, meta
-- JSON ("" leaves that value as it is)
-- Returns one code per job: OK, STALE, MISSING or DUPLICATE (it ended: nothing written).
local prefix = ARGV[1]
local _, now_str = now_s()
local codes = {}
for i = 2, #ARGV, 4 do
  local id, exec, progress, meta = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = prefix .. id
  local f = redis.pcall('HMGET', key, F_STATUS, F_EXECUTION_ID, F_WAITED)
  if f.err then f = {} end
  local code = owner_code(f[1], f[2], exec)
  if code == OK then
    if progress ~= '' then
      redis.call('HSET', key, F_PROGRESS, progress, F_PROGRESS_AT, now_str)
      if f[3] then announce(key, id, 'p', now_str .. ' ' .. progress) end
    end
    if meta ~= '' then redis.call('HSET', key, F_META, meta) end
  end
  codes[#codes + 1] = code
end
return codes
