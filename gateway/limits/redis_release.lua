-- release: give back a lease, or withdraw a ticket (timeout, cancellation), whichever `id`
-- is now, then hand freed slots on. Idempotent: a second call finds nothing to drop.
-- ARGV: id, account limit, lease ttl ms, channel
-- Returns {1 released | 2 withdrawn | 0 nothing, tickets still queued in the account}.
local now = now_ms()
local what = 0
if drop_lease(ARGV[1]) then
  what = 1
elseif drop_ticket(ARGV[1]) then
  what = 2
end
purge(now)
dispatch(tonumber(ARGV[2]), now, now + tonumber(ARGV[3]), ARGV[4])
return {what, redis.call('ZCARD', WAITERS)}
