-- ops: acquires, releases and limit changes of one account, in the order given, in one call.
-- The limiter sends together whatever requests asked for while all its calls were in flight.
-- ARGV: account limit, lease ttl ms, ticket ttl ms, channel, then five per op:
--   'a', id, tenant, tenant limit, weight  acquire: a lease at once if the tenant has no one
--       queued and both pools have room (1), else a ticket at the back of the tenant's queue
--       (0). Idempotent per id (safe to retry).
--   'r', id, '', '', ''                    release: give back a lease (1) or withdraw a ticket
--       (2), whichever `id` is now, or nothing (0: a second call is a no-op).
--   'c', '', tenant, tenant limit, weight  a reload changed the tenant's limit or weight (0).
-- Freed slots go to waiting tenants in turn (dispatch) before any later acquire in the batch
-- and at the end. Returns one number per op, then the tickets still queued in the account.
local limit, channel = tonumber(ARGV[1]), ARGV[4]
local now = now_ms()
local expiry = now + tonumber(ARGV[2])
local ticket_expiry = now + tonumber(ARGV[3])
local out = {}
purge(now)
local dirty = true -- dispatch before the next acquire: slots may have been freed

for i = 5, #ARGV, 5 do
  local id = ARGV[i + 1]
  if ARGV[i] == 'a' then
    local tenant, tlimit, weight = ARGV[i + 2], tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
    -- The digits as sent: Lua would write a number from 1e14 on as '1e+14'.
    redis.call('HSET', TENANTS, tenant, ARGV[i + 3] .. ' ' .. ARGV[i + 4])
    if dirty then
      dispatch(limit, now, expiry, channel)
      dirty = false
    end
    if redis.call('ZSCORE', LEASES, id) then
      redis.call('ZADD', LEASES, expiry, id) -- granted to its ticket: claimed for the full ttl
      out[#out + 1] = 1
    elseif redis.call('HEXISTS', TICKETS, id) == 1 then
      out[#out + 1] = 0
    elseif queued_for(tenant) == 0 and redis.call('ZCARD', LEASES) < limit
        and held_by(tenant) < tlimit then
      grant(id, tenant, expiry)
      out[#out + 1] = 1
    else
      enqueue(id, tenant, weight, ticket_expiry)
      redis.call('PUBLISH', channel .. 'all', LEASES) -- replicas give back the slots they keep
      out[#out + 1] = 0
    end
  elseif ARGV[i] == 'c' then
    redis.call('HSET', TENANTS, ARGV[i + 2], ARGV[i + 3] .. ' ' .. ARGV[i + 4])
    dirty = true -- a raised limit lets waiters in now
    out[#out + 1] = 0
  else
    local what = 0
    if drop_lease(id) then
      what = 1
    elseif drop_ticket(id) then
      what = 2
    end
    dirty = dirty or what > 0
    out[#out + 1] = what
  end
end
if dirty then
  dispatch(limit, now, expiry, channel)
end
out[#out + 1] = redis.call('ZCARD', WAITERS)
return out
