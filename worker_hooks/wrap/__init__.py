"""The job wrapper (``stager wrap``): stage-in, run, stage-out, result last.

Owns: the wrapper (``wrapper``), the node it runs on (``node``), the command
runner, sandboxes and their sweeping, bundles, finding and uploading
outputs, memoization (``memo``), its settings and CLI. May import ``task``,
``fsd`` and ``stager``; never ``dispatch``, ``worker`` or ``local``.
"""
