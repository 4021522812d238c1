"""fsd: node storage, the content-addressed scratch cache and its users.

Owns the cache (``cache``: entries, quota, single flight, pins, recovery;
its on-disk format is docs/cache-format.md) and its small collaborators
(``locks``, ``ledger``, ``owner``, ``groupcommit``, ``eviction``), putting
entries into sandboxes (``materialize``), stage-in through the cache with
the NFS head as a second tier (``stagein``), its settings and ``stager
cache`` (``cli``). Imports ``stager``; is imported only by
``worker_hooks``. Not built yet: the node file service (peer fetch,
mirroring, write-behind).
"""
