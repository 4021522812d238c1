"""The node agent (``stager worker``): pulls leases, runs them through ``wrap``.

Owns: the agent's threads (``agent``), its settings and CLI. May import
``task``, ``wrap``, ``dispatch.client`` and ``fsd``.
"""
