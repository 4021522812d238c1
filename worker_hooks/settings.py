"""Settings of the job wrapper: ``[wrap]`` in stager.toml, ``STAGER_*`` variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stager.settings import (
    one_of,
    optional_path,
    positive_float,
    positive_int,
    setting_field,
)
from worker_hooks.scheduling import POLICIES

MATERIALIZE_MODES = ("link", "copy", "symlink")


def _default_sandbox_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stager" / "sandboxes"


@dataclass(frozen=True, kw_only=True)
class WrapSettings:
    sandbox_dir: Path = setting_field(
        _default_sandbox_dir, Path, "where task sandboxes are made (same disk as the cache)"
    )
    materialize: str = setting_field(
        "link", one_of(*MATERIALIZE_MODES), "how inputs appear in a sandbox: link, copy or symlink"
    )
    kill_grace_s: float = setting_field(
        5.0, positive_float, "after a timeout's SIGTERM, wait this long before SIGKILL"
    )
    nfs_head: Path | None = setting_field(
        None, optional_path, "a shared cache on a mount, read before S3 (the NFS head)"
    )


def _default_dispatcher_db() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "stager" / "dispatcher.sqlite"


@dataclass(frozen=True, kw_only=True)
class DispatcherSettings:
    """``[dispatcher]`` in stager.toml. The token is not a setting: see docs/dispatcher.md."""

    dispatcher_db: Path = setting_field(_default_dispatcher_db, Path, "the task database (SQLite)")
    host: str = setting_field("127.0.0.1", str, "address to listen on")
    port: int = setting_field(8765, int, "port to listen on (0: any free port)")
    lease_s: float = setting_field(
        60.0, positive_float, "a lease lasts this long between heartbeats"
    )
    max_failures: int = setting_field(
        3, positive_int, "failed attempts before a task fails for good"
    )
    worker_timeout_s: float = setting_field(
        30.0, positive_float, "a worker silent this long no longer counts as a cache holder"
    )
    starvation_s: float = setting_field(
        60.0, positive_float, "a task queued this long goes first whatever the policy"
    )
    policy: str = setting_field(
        "good-cache-compute", one_of(*POLICIES), "fifo, max-cache-hit, good-cache-compute"
    )
    tls_cert: Path | None = setting_field(None, optional_path, "TLS certificate (PEM)")
    tls_key: Path | None = setting_field(None, optional_path, "TLS private key (PEM)")


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """``[worker]`` in stager.toml."""

    slots: int = setting_field(1, positive_int, "tasks run at once")
    prefetch: int = setting_field(
        1, int, "tasks leased ahead, their inputs staged while others run"
    )
    heartbeat_s: float = setting_field(5.0, positive_float, "seconds between heartbeats")
    # Short enough that an idle worker drains quickly; new work wakes a poll at once.
    lease_wait_s: float = setting_field(5.0, positive_float, "long-poll wait for work")
    drain_s: float = setting_field(
        60.0, positive_float, "on SIGTERM, let running tasks end this long"
    )
    dispatcher_lost_s: float = setting_field(
        120.0, positive_float, "give up when the dispatcher is unreachable this long"
    )
