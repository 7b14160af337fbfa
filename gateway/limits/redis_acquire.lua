-- acquire: a lease at once if the tenant has no one queued and both pools have room,
-- else a ticket at the back of the tenant's queue. Idempotent per id (safe to retry).
-- ARGV: id, tenant, tenant limit, weight, account limit, lease ttl ms, ticket ttl ms, channel
-- Returns 1 (leased) or 0 (queued).
local id, tenant = ARGV[1], ARGV[2]
local tlimit, weight, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local expiry = now + tonumber(ARGV[6])
redis.call('HSET', TENANTS, tenant, tlimit .. ' ' .. weight)
purge(now)
dispatch(limit, now, expiry, ARGV[8])
if redis.call('ZSCORE', LEASES, id) then
  redis.call('ZADD', LEASES, expiry, id) -- granted to its ticket: claimed for the full ttl
  return 1
end
if redis.call('HEXISTS', TICKETS, id) == 1 then
  return 0
end
if queued_for(tenant) == 0 and redis.call('ZCARD', LEASES) < limit and held_by(tenant) < tlimit then
  grant(id, tenant, expiry)
  return 1
end
enqueue(id, tenant, weight, now + tonumber(ARGV[7]))
return 0
