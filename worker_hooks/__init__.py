"""worker_hooks: where the data layer meets execution, in rooms by role.

- ``task/``: the task model (specs, results, workflows) and the wire
  protocol; pure, imports only ``stager``'s value types.
- ``wrap/``: the job wrapper (stage-in, run, stage-out, result last).
- ``dispatch/``: the dispatcher, its task DB, scheduling, its client and CLI;
  never imports ``fsd`` or an S3 client.
- ``worker/``: the node agent that pulls tasks and runs them through ``wrap/``.
- ``local/``: a dispatcher and workers as local processes; the demo.
- ``inspect/``: what a user asks after the fact (``stager logs``): reads the
  dispatcher through its client and the logs in S3.

``wrap/`` and ``dispatch/`` do not import each other
(tests/unit/test_import_graph.py checks every rule). Nothing imports
``worker_hooks`` but the ``stager`` command's entry points.
"""
