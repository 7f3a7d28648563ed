#!lua flags=allow-oom
-- lock_renew: take a free lease lock, or extend it for the owner of the token.
-- (Allowed on a full Redis: a scheduler must keep leading where workers drain.)
-- KEYS[1] lock   ARGV[1] token   ARGV[2] ttl in ms
-- Returns {1} if the token holds the lock now, else {0, ms until it lapses}.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1}
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1}
end
return {0, redis.call('PTTL', KEYS[1])}
