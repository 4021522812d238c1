"""Parsl on stager: an S3 staging provider on each node's cache, and memoization by content.

``from worker_hooks.parsl import stager_storage`` gives a HighThroughputExecutor
its ``storage_access`` list (docs/parsl.md). Importing this package needs
Parsl (``pip install 'stager[parsl]'``), on the submit host and on every
worker node.
"""

from __future__ import annotations

from worker_hooks.parsl.config import NodeOptions, register_memo, stager_storage
from worker_hooks.parsl.staging import StagerStaging

__all__ = ["NodeOptions", "StagerStaging", "register_memo", "stager_storage"]
