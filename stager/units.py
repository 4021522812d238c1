"""Human-readable sizes and rates: parse ``140G`` and print ``1.5 GiB``."""

from __future__ import annotations

import re

from stager.errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str | int) -> int:
    """Bytes from ``1048576``, ``64K``, ``8MiB``, ``140G`` (binary multiples)."""
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"size {text} is negative")
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(
            f"cannot read {text!r} as a size", hint="write a size like 512, 64K, 8M or 140G"
        )
    number, unit, _ = match.groups()
    return int(float(number) * 1024 ** _POWERS[unit.lower()])


def format_size(size_bytes: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_rate(size_bytes: int, seconds: float) -> str:
    """Throughput in MB/s (decimal megabytes, as transfer tools report it)."""
    if seconds <= 0:
        return "- MB/s"
    return f"{size_bytes / seconds / 1e6:.1f} MB/s"
