#!lua flags=allow-oom
-- lock_release: drop a lease lock, only for the owner of the token.
-- KEYS[1] lock   ARGV[1] token
-- Returns 1 if released, 0 if the lock was someone else's or gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
