"""Progress on long transfers: one byte-counting bar on stderr.

Shown only when stderr is a terminal and progress is enabled; safe to call
from s3transfer's worker threads.
"""

from __future__ import annotations

import sys
import threading
from typing import Any


class Progress:
    """Counts bytes; ``advance`` may be called from any thread."""

    def __init__(self, total_bytes: int, description: str, *, enabled: bool) -> None:
        self._lock = threading.Lock()
        self._bar: Any = None
        if enabled and sys.stderr.isatty():  # tqdm loads in ~35 ms: only to draw
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_bytes,
                desc=description,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                leave=False,
                file=sys.stderr,
            )

    def advance(self, count: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
