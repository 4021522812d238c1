"""The node a Parsl worker stages through: its stager cache and object store.

Opened once per worker process from :class:`NodeOptions` (pickled with each
task: paths and sizes, never credentials) and the worker's own environment
and stager.toml (credentials come from there, or the instance role).
``$VARIABLES`` in a path are expanded on the worker: ``cache_dir =
"/scratch/stager-$PARSL_WORKER_BLOCK_ID"`` gives each block its own cache
when several share one machine.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from stager.cli.context import CliState
from worker_hooks.wrap.node import Node, open_node


@dataclass(frozen=True)
class NodeOptions:
    """What a worker node's cache needs; None: the node's own setting (``STAGER_*``
    variables, stager.toml, then stager's defaults)."""

    cache_dir: str | None = None
    cache_quota: str | None = None  # "200G", say
    nfs_head: str | None = None  # a shared cache on a mount, read before S3
    materialize: str | None = None  # link (default), copy or symlink
    config: str | None = None  # a stager.toml on the worker nodes


_opened: dict[NodeOptions, Node] = {}
_lock = threading.Lock()


def node_for(options: NodeOptions) -> Node:
    """This process's node for ``options`` (opened on first use, then kept)."""
    with _lock:
        node = _opened.get(options)
        if node is None:
            config = _path(options.config)
            flags = {
                "cache_dir": _path(options.cache_dir),
                "cache_quota": options.cache_quota,
                "nfs_head": _path(options.nfs_head),
                "materialize": options.materialize,
            }
            node = _opened[options] = open_node(CliState(flags={}, config_path=config), flags)
        return node


def _path(value: str | None) -> Path | None:
    """A path as this worker's environment makes it (``$VARIABLES`` expanded)."""
    return None if value is None else Path(os.path.expandvars(value))
