"""Concurrency limiting: the `Limiter` interface and its backends (in-memory, Redis)."""

from gateway.limits.base import Lease, Limiter, PoolState
from gateway.limits.memory import MemoryLimiter

__all__ = ["Lease", "Limiter", "MemoryLimiter", "PoolState"]
