"""Rate limits shared by several processes: a small store interface and its backends.

A gateway's own ``TokenBucket`` limits what one process admits. A limit that
holds across several gateway processes needs shared state; ``LimitStore`` is
that state's interface, with two implementations:

- ``MemoryLimitStore``: in this process, for a single gateway (the default);
- ``meshkit.ratelimit.redis.RedisLimitStore``: in Redis, one atomic Lua
  script per request (the ``redis`` extra).

Both run the same GCRA as ``meshkit.policy.GCRA`` and pass the same
conformance suite (``meshkit.testing.conformance.LimitStoreConformance``).
"""

from meshkit.ratelimit._store import LimitStore, MemoryLimitStore

__all__ = ["LimitStore", "MemoryLimitStore"]
