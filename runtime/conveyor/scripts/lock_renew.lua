-- lock_renew: extend a lease lock, only for the owner of the token.
-- KEYS[1] lock   ARGV[1] token   ARGV[2] ttl in ms
-- Returns 1 if renewed, 0 if the lock is someone else's or gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
