"""Settings of the job wrapper: ``[wrap]`` in stager.toml, ``STAGER_*`` variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fsd.materialize import Materialize
from stager.settings import (
    member_of,
    optional_path,
    positive_float,
    setting_field,
)


def _default_sandbox_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stager" / "sandboxes"


@dataclass(frozen=True, kw_only=True)
class WrapSettings:
    sandbox_dir: Path = setting_field(
        _default_sandbox_dir, Path, "where task sandboxes are made (same disk as the cache)"
    )
    materialize: Materialize = setting_field(
        Materialize.LINK,
        member_of(Materialize),
        "how inputs appear in a sandbox: link, copy or symlink",
    )
    kill_grace_s: float = setting_field(
        5.0, positive_float, "after a timeout's SIGTERM, wait this long before SIGKILL"
    )
    nfs_head: Path | None = setting_field(
        None, optional_path, "a shared cache on a mount, read before S3 (the NFS head)"
    )
