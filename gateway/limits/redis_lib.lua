-- Shared by every limiter script (prepended to each): the key schema and the policy.
-- Redis runs each script atomically, so no one sees a half-made change. Times are
-- milliseconds from Redis's own clock (TIME), so replica clocks do not matter.
--
-- KEYS (one account; all share the hash tag {acct:NAME}, so this runs on Redis Cluster):
local LEASES = KEYS[1]   -- ZSET  lease id -> expiry (ms)
local HOLDERS = KEYS[2]  -- HASH  lease id -> tenant
local INFLIGHT = KEYS[3] -- HASH  tenant -> leases held
local WAITERS = KEYS[4]  -- ZSET  ticket id -> expiry (ms), refreshed by its replica's heartbeat
local TICKETS = KEYS[5]  -- HASH  ticket id -> "tenant\nseq" (its place in QUEUE)
local QUEUE = KEYS[6]    -- HASH  "tenant\nseq" -> ticket id: per-tenant FIFOs
local QSTATE = KEYS[7]   -- HASH  "h\nT" head seq, "t\nT" tail seq, "n\nT" length, "c\nT" credit
local RING = KEYS[8]     -- LIST  tenants with waiters, in round-robin order
local TENANTS = KEYS[9]  -- HASH  tenant -> "limit weight", as last seen by any replica
-- A ticket that gets a slot becomes a lease with the same id, announced by PUBLISH on
-- "<channel prefix><replica>", the replica being the id's part before the first "-"; the
-- lease keeps the ticket's short expiry until the replica claims it (see dispatch).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function held_by(tenant)
  return tonumber(redis.call('HGET', INFLIGHT, tenant) or '0')
end

local function queued_for(tenant)
  return tonumber(redis.call('HGET', QSTATE, 'n\n' .. tenant) or '0')
end

local function drop_lease(id)
  if redis.call('ZREM', LEASES, id) == 0 then
    return false
  end
  local tenant = redis.call('HGET', HOLDERS, id)
  redis.call('HDEL', HOLDERS, id)
  if tenant and redis.call('HINCRBY', INFLIGHT, tenant, -1) <= 0 then
    redis.call('HDEL', INFLIGHT, tenant)
  end
  return true
end

local function forget_queue(tenant)
  redis.call('HDEL', QSTATE, 'h\n' .. tenant, 't\n' .. tenant, 'n\n' .. tenant, 'c\n' .. tenant)
end

local function drop_ticket(id)
  local place = redis.call('HGET', TICKETS, id)
  if not place then
    return false
  end
  local tenant = string.match(place, '^(.*)\n%d+$')
  redis.call('HDEL', TICKETS, id)
  redis.call('HDEL', QUEUE, place)
  redis.call('ZREM', WAITERS, id)
  if redis.call('HINCRBY', QSTATE, 'n\n' .. tenant, -1) <= 0 then
    forget_queue(tenant)
    redis.call('LREM', RING, 0, tenant)
  end
  return true
end

local function enqueue(id, tenant, weight, expiry)
  local seq = redis.call('HINCRBY', QSTATE, 't\n' .. tenant, 1) - 1
  local place = tenant .. '\n' .. seq
  redis.call('HSET', QUEUE, place, id)
  redis.call('HSET', TICKETS, id, place)
  redis.call('ZADD', WAITERS, expiry, id)
  if redis.call('HINCRBY', QSTATE, 'n\n' .. tenant, 1) == 1 then
    redis.call('HSET', QSTATE, 'c\n' .. tenant, weight)
    redis.call('RPUSH', RING, tenant)
  end
end

-- The tenant's oldest live ticket, its expiry, and how many stay queued. Holes left by
-- withdrawn tickets are skipped (each once), so this is O(1) amortised; so are tickets past
-- their expiry (their replica stopped renewing them: dead), which are dropped on the way.
local function pop_ticket(tenant, now)
  local head = tonumber(redis.call('HGET', QSTATE, 'h\n' .. tenant) or '0')
  local tail = tonumber(redis.call('HGET', QSTATE, 't\n' .. tenant) or '0')
  while head < tail do
    local place = tenant .. '\n' .. head
    head = head + 1
    local id = redis.call('HGET', QUEUE, place)
    if id then
      local expiry = tonumber(redis.call('ZSCORE', WAITERS, id) or '0')
      redis.call('HDEL', QUEUE, place)
      redis.call('HDEL', TICKETS, id)
      redis.call('ZREM', WAITERS, id)
      local left = redis.call('HINCRBY', QSTATE, 'n\n' .. tenant, -1)
      if left <= 0 then
        forget_queue(tenant)
      else
        redis.call('HSET', QSTATE, 'h\n' .. tenant, head)
      end
      if expiry > now then
        return id, left, expiry
      end
      if left <= 0 then
        return nil, 0
      end
    end
  end
  forget_queue(tenant)
  return nil, 0
end

local function grant(id, tenant, expiry)
  redis.call('ZADD', LEASES, expiry, id)
  redis.call('HSET', HOLDERS, id, tenant)
  redis.call('HINCRBY', INFLIGHT, tenant, 1)
end

-- Leases past their expiry belong to dead (or hung) replicas; so do tickets not refreshed.
local function purge(now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now)) do
    drop_lease(id)
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', WAITERS, '-inf', now)) do
    drop_ticket(id)
  end
end

local function tenant_config(tenant)
  local cfg = redis.call('HGET', TENANTS, tenant)
  if not cfg then
    return 1, 1
  end
  -- Digits, as the ops script stores them; tonumber also reads the '1e+14' older versions wrote.
  local limit, weight = string.match(cfg, '^(%S+) (%S+)$')
  return tonumber(limit) or 1, tonumber(weight) or 1
end

-- Hand free account slots to waiting tenants in turn, `weight` grants per turn, skipping
-- tenants at their own limit: the same policy as the in-memory limiter's _dispatch.
-- A granted ticket's lease keeps the ticket's expiry (a few heartbeats away) until its replica
-- claims it for the full lease ttl (`expiry`): its next heartbeat lists it, as a ticket or as a
-- lease. So a slot granted to a dead replica's ticket comes back as soon as the ticket would
-- have expired, not a whole ttl after the grant.
local function dispatch(limit, now, expiry, channel)
  local inflight = redis.call('ZCARD', LEASES)
  local ring = redis.call('LLEN', RING)
  local skipped = 0
  while inflight < limit and ring > 0 and skipped < ring do
    local tenant = redis.call('LINDEX', RING, 0)
    local tlimit, weight = tenant_config(tenant)
    if held_by(tenant) >= tlimit then
      redis.call('RPUSH', RING, redis.call('LPOP', RING))
      skipped = skipped + 1
    else
      local id, left, ticket_expiry = pop_ticket(tenant, now)
      if id then
        grant(id, tenant, math.min(ticket_expiry, expiry))
        redis.call('PUBLISH', channel .. string.match(id, '^[^-]*'), id)
        inflight = inflight + 1
        skipped = 0
      end
      if left <= 0 then
        redis.call('LPOP', RING)
        ring = ring - 1
      elseif redis.call('HINCRBY', QSTATE, 'c\n' .. tenant, -1) <= 0 then
        redis.call('HSET', QSTATE, 'c\n' .. tenant, weight)
        redis.call('RPUSH', RING, redis.call('LPOP', RING))
      end
    end
  end
end
