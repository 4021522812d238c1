"""Settings of the job wrapper: ``[wrap]`` in stager.toml, ``STAGER_*`` variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stager.settings import positive_float, setting_field

MATERIALIZE_MODES = ("link", "copy", "symlink")


def _default_sandbox_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stager" / "sandboxes"


def _materialize(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in MATERIALIZE_MODES:
        raise ValueError(f"{value!r} is not one of {', '.join(MATERIALIZE_MODES)}")
    return text


@dataclass(frozen=True, kw_only=True)
class WrapSettings:
    sandbox_dir: Path = setting_field(
        _default_sandbox_dir, Path, "where task sandboxes are made (same disk as the cache)"
    )
    materialize: str = setting_field(
        "link", _materialize, "how inputs appear in a sandbox: link, copy or symlink"
    )
    kill_grace_s: float = setting_field(
        5.0, positive_float, "after a timeout's SIGTERM, wait this long before SIGKILL"
    )
