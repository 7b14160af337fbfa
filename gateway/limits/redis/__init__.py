"""The Redis limiter: one set of limits shared by every gateway replica.

Every state change is a Lua script (`redis_*.lua` in `gateway/limits/`, each prefixed with
`redis_lib.lua`), loaded once and run atomically by EVALSHA, with Redis's clock (`TIME`) for
expiries. Keys, with P the `key_prefix` (so gateways can share one Redis) and every key of one
account under the hash tag `{acct:NAME}` (so each script touches one Redis Cluster slot):

    P:{acct:NAME}:leases    ZSET  lease id -> expiry (ms); account in-flight = ZCARD
    P:{acct:NAME}:holders   HASH  lease id -> tenant
    P:{acct:NAME}:inflight  HASH  tenant -> leases held (field dropped at 0)
    P:{acct:NAME}:waiters   ZSET  ticket id -> expiry (ms), renewed by its replica's heartbeat
    P:{acct:NAME}:tickets   HASH  ticket id -> "TENANT\\nSEQ", its place in the queue
    P:{acct:NAME}:queue     HASH  "TENANT\\nSEQ" -> ticket id: one FIFO per tenant
    P:{acct:NAME}:qstate    HASH  per tenant: head, tail, length, round-robin credit
    P:{acct:NAME}:ring      LIST  tenants with waiters, in round-robin order
    P:{acct:NAME}:tenants   HASH  tenant -> "LIMIT WEIGHT" (dispatch needs other tenants')
    P:grants:REPLICA        pub/sub channel: ticket ids just given a slot
    P:grants:all            pub/sub channel: a ticket queued, kept slots go back (kept.py)

Ids are "REPLICA-N"; a ticket that gets a slot becomes the lease of the same id. When idle, an
account leaves only its `tenants` hash behind.

Expiries: a lease lasts lease_ttl_s from its last renewal; a ticket only three heartbeats from
its replica's last one. A ticket that gets a slot hands its own expiry to the lease, until its
replica's next heartbeat claims the lease for lease_ttl_s. So of what a SIGKILLed replica
leaves, its leases come back within lease_ttl_s and its queued requests (granted or not) hold
no slot past three heartbeat intervals after its last heartbeat.

Scripts: `ops` runs a batch of acquires and releases of one account, in order. Acquire leases at
once when the tenant has no one queued and both pools have room, else queues a ticket. Release
drops a lease or withdraws a ticket, whichever the id is (so a timeout or cancellation racing a
grant never leaks the slot; a second call is a no-op), and freed slots go to waiting tenants in
turn, PUBLISHing each grant. `heartbeat` is each replica's periodic call per account.

The parts, each documenting what it owns:

    limiter.py    RedisLimiter: accounts, acquire and release, reloads, the fallback
    account.py    what this replica knows of one account; its leases and tickets
    batch.py      ops batched into calls of redis_ops.lua; releases owed while Redis is away
    kept.py       kept slots: a released slot kept for the tenant's next request
    heartbeat.py  the link: heartbeat, grants by pub/sub, outages, the pools' state
    scripts.py    the scripts' contract: KEYS, ARGV, and replies decoded into named types
"""

from gateway.limits.redis.limiter import RedisLimiter

__all__ = ["RedisLimiter"]
