"""worker_hooks: where data meets execution (job wrapper, worker, dispatcher).

Imports ``fsd`` and ``stager``. Not built yet: see the open issues
"The job wrapper" and "A minimal dispatcher".
"""
