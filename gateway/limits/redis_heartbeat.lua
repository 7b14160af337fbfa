-- heartbeat, one replica's periodic call per account: renew its leases (and claim those just
-- granted to its tickets), keep its tickets alive, purge what dead replicas left, hand out
-- free slots (the safety net for a lost PUBLISH or an expired lease), and report its tickets
-- and the pools' state.
-- ARGV: account limit, lease ttl ms, ticket ttl ms, channel,
--       n, n lease ids to renew, m, m ticket ids, k, k tenant names
-- Returns {lost lease ids, per ticket 1 leased | 0 queued | -1 gone,
--          {leases, tickets, per tenant: leases, tickets}}.
local now = now_ms()
local limit = tonumber(ARGV[1])
local lease_expiry = now + tonumber(ARGV[2])
local ticket_expiry = now + tonumber(ARGV[3])
local i = 5
local lost = {}
for j = 1, tonumber(ARGV[i]) do
  local id = ARGV[i + j]
  -- Past its expiry but still here means no script ran since: no one got its slot yet.
  if redis.call('ZSCORE', LEASES, id) then
    redis.call('ZADD', LEASES, lease_expiry, id)
  else
    lost[#lost + 1] = id
  end
end
i = i + tonumber(ARGV[i]) + 1
local tickets = {}
for j = 1, tonumber(ARGV[i]) do
  local id = ARGV[i + j]
  tickets[j] = id
  if redis.call('HEXISTS', TICKETS, id) == 1 then
    redis.call('ZADD', WAITERS, ticket_expiry, id)
  elseif redis.call('ZSCORE', LEASES, id) then
    -- Granted since the last beat, still on the ticket's short expiry: claim it.
    redis.call('ZADD', LEASES, lease_expiry, id)
  end
end
i = i + tonumber(ARGV[i]) + 1
purge(now)
dispatch(limit, now, lease_expiry, ARGV[4])
local status = {}
for j, id in ipairs(tickets) do
  if redis.call('ZSCORE', LEASES, id) then
    status[j] = 1
  elseif redis.call('HEXISTS', TICKETS, id) == 1 then
    status[j] = 0
  else
    status[j] = -1
  end
end
local state = {redis.call('ZCARD', LEASES), redis.call('ZCARD', WAITERS)}
for j = 1, tonumber(ARGV[i]) do
  local tenant = ARGV[i + j]
  state[#state + 1] = held_by(tenant)
  state[#state + 1] = queued_for(tenant)
end
return {lost, status, state}
