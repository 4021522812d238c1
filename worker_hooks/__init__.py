"""worker_hooks: where data meets execution (job wrapper, worker, dispatcher).

Imports ``fsd`` and ``stager``; nothing imports it.
"""
