#!lua flags=allow-oom
-- release: hand leased jobs back to the head of their queue (shutdown, or claimed but
-- never started). Not a failure and not a delivery: a started job gets back the delivery
-- its start charged; a prefetched one was never charged. A suspect goes back to the
-- recovered list, so it still runs apart from the others.
-- KEYS[1] ready list   KEYS[2] recovered list   KEYS[3] prefetched zset   KEYS[4] leases zset
-- KEYS[5] the worker's claimed set   KEYS[6] wake list
-- ARGV[1] job key prefix   ARGV[2] worker ID, then per job two values: id, execution ID
-- Returns one code per job: OK, STALE (another execution owns it now) or MISSING.
local err = expect_types({KEYS[1], 'list', KEYS[2], 'list', KEYS[3], 'zset', KEYS[4], 'zset',
  KEYS[5], 'set', KEYS[6], 'list'})
if err then return err end
local pairs_ = {}
for i = 3, #ARGV, 2 do pairs_[#pairs_ + 1] = {ARGV[i], ARGV[i + 1]} end
return hand_back(pairs_, ARGV[1], ARGV[2], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
