"""fsd: node storage, the content-addressed scratch cache and its users.

Owns the cache (``cache``: entries, quota, single flight, pins, recovery;
its on-disk format is docs/cache-format.md) and its small collaborators
(``locks``, ``ledger``, ``seals``, ``groupcommit``, ``eviction``), putting
entries into sandboxes (``materialize``), stage-in through the cache with
the NFS head and peers as further tiers (``stagein``), the node file
service (``peerserver``, ``peerclient``, ``peerauth``, ``service``) and its
write-behind ``outbox``, its settings and ``stager cache`` / ``stager fsd``
(``cli``). Imports ``stager``; is imported only by ``worker_hooks``.
"""
