"""The node a wrapper runs on: its caches, object store and sandboxes.

:func:`open_node` builds one from flags, ``STAGER_*`` variables and
stager.toml, for ``stager wrap`` and ``stager worker`` alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsd.cache import NodeCache
from fsd.cli import CacheContext
from fsd.materialize import Materialize
from fsd.rootformat import Tier
from fsd.settings import default_quota_bytes
from stager.cli.context import CliState
from stager.errors import ConfigError, StagerError
from stager.objectstore import ObjectStore
from stager.settings import load_component
from worker_hooks.wrap.sandboxes import SandboxPool, sweep
from worker_hooks.wrap.settings import WrapSettings

CACHE_FLAGS = ("cache_dir", "cache_quota")
WRAP_FLAGS = ("sandbox_dir", "materialize", "nfs_head")


@dataclass(frozen=True)
class Node:
    """What the wrapper uses of the node it runs on."""

    cache: NodeCache
    store: ObjectStore
    sandbox_dir: Path
    nfs_head: NodeCache | None = None
    materialize: Materialize = Materialize.LINK
    kill_grace_s: float = 5.0
    workers: int = 8
    sandbox_pool: SandboxPool | None = None  # sandboxes reused (a worker); None: one per task

    @property
    def bundles_dir(self) -> Path:
        return self.cache.root.parent / (self.cache.root.name + "-bundles")

    def tidy(self, log: Callable[[str], None]) -> None:
        """Clear up after processes killed on this node: their sandboxes, the commands
        they left running, and the multipart uploads they left open in S3 (an error
        reaching S3 is logged: tidying never stops a task)."""
        swept = sweep(self.sandbox_dir)
        if swept.sandboxes:
            log(
                f"removed {swept.sandboxes} sandboxes of dead processes and killed"
                f" {swept.process_groups + swept.processes} commands they left running"
            )
        try:
            aborted = self.store.abort_left_behind()
        except StagerError as exc:
            log(f"cannot abort the uploads killed processes left open: {exc.one_line()}")
            return
        if aborted:
            log(f"aborted {aborted} uploads that killed processes left open")


def open_node(core: CliState, node_flags: Mapping[str, Any]) -> Node:
    """The node's caches, store and sandboxes (``node_flags``: CACHE_FLAGS and WRAP_FLAGS)."""
    cache_flags = {name: node_flags.get(name) for name in CACHE_FLAGS}
    wrap_flags = {name: node_flags.get(name) for name in WRAP_FLAGS}
    settings = load_component(
        WrapSettings, wrap_flags, config_path=core.config_path, section="wrap"
    )
    return Node(
        cache=CacheContext(core, cache_flags).open(),
        store=core.object_store(),
        # Absolute: a command's STAGER_SANDBOX names it, and its working directory is elsewhere.
        sandbox_dir=settings.sandbox_dir.absolute(),
        nfs_head=open_nfs_head(settings.nfs_head) if settings.nfs_head else None,
        materialize=settings.materialize,
        kill_grace_s=settings.kill_grace_s,
        workers=core.settings.files_in_flight,
    )


def open_nfs_head(root: Path) -> NodeCache:
    """The shared cache on its mount; never created here (a missing mount would go unseen)."""
    if not (root / "data").is_dir():
        raise ConfigError(
            f"the NFS head {root} is not a stager cache",
            hint="mount it, or fill it: `stager cache --cache-dir HEAD --tier shared fetch URL`",
        )
    return NodeCache(root, quota_bytes=default_quota_bytes(root), recover=False, tier=Tier.SHARED)
