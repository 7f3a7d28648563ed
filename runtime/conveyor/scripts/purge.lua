-- purge: delete every waiting job of a queue (ready; scheduled too if asked).
-- Started, finished and failed jobs are left alone.
-- KEYS[1] ready list   KEYS[2] scheduled zset
-- ARGV[1] job key prefix   ARGV[2] "1" to purge scheduled jobs too
-- Returns {ready jobs deleted, scheduled jobs deleted}.
local prefix = ARGV[1]
local function drop(ids)
  for _, id in ipairs(ids) do
    local key = prefix .. id
    local lock = redis.call('HGET', key, 'unique_lock')
    if lock and redis.call('GET', lock) == id then redis.call('DEL', lock) end
    redis.call('DEL', key)
  end
  return #ids
end
local ready = drop(redis.call('LRANGE', KEYS[1], 0, -1))
redis.call('DEL', KEYS[1])
local scheduled = 0
if ARGV[2] == '1' then
  scheduled = drop(redis.call('ZRANGE', KEYS[2], 0, -1))
  redis.call('DEL', KEYS[2])
end
return {ready, scheduled}
