"""The dispatcher (frontend side): task queue, leases, scheduling, its client.

Owns: the HTTP server (``server``), the SQLite task DB (``taskdb``), the
scheduling policies (``scheduling``), the client workers and users call
(``client``), following a workflow (``follow``), its settings and CLI. May
import ``task`` and ``stager``'s value types; never ``wrap``, ``fsd``,
boto3 or awscrt: a frontend process needs no node code.
"""
