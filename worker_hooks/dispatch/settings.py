"""Settings of the dispatcher: ``[dispatcher]`` in stager.toml, ``STAGER_*`` variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stager.settings import (
    member_of,
    optional_path,
    positive_float,
    positive_int,
    setting_field,
)
from worker_hooks.dispatch.scheduling import Policy


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
    policy: Policy = setting_field(
        Policy.GOOD_CACHE_COMPUTE, member_of(Policy), "fifo, max-cache-hit, good-cache-compute"
    )
    tls_cert: Path | None = setting_field(None, optional_path, "TLS certificate (PEM)")
    tls_key: Path | None = setting_field(None, optional_path, "TLS private key (PEM)")
