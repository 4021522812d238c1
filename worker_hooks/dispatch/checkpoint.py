"""WAL checkpoints off the request path.

SQLite's automatic checkpoint runs inside the commit that crosses its
threshold: it copies up to a thousand pages back into the database file and
syncs it. On a large database those are scattered writes and a sync of tens
of milliseconds, and the request that happens to commit waits for them,
with every request queued behind it on the dispatcher's one event loop.

While a :class:`Checkpointer` runs, the task database makes no automatic
checkpoint (:meth:`TaskDB.checkpoint_elsewhere`). A thread of its own, on a
connection of its own, every ``every_s``:

1. copies the WAL back with a PASSIVE checkpoint, which neither waits for
   nor blocks the event loop's writes (SQLite does the I/O without Python's
   lock, so the loop keeps answering);
2. then finishes with a RESTART checkpoint: what is left to copy is what
   was written meanwhile, and the next write starts the WAL over. Without
   this step a WAL written to without pause would never start over, and
   would grow. A RESTART holds writes back while it waits for the
   database to be free, so it gives up after ``RESTART_WAIT_MS`` (the
   next round tries again): waiting a second, it once stalled the event
   loop for 440 ms.

A round that finds the database busy is skipped; the next one catches up.
The last round runs when the checkpointer stops.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from types import TracebackType

RESTART_WAIT_MS = 20  # how long the RESTART step waits for the database to be free


class Checkpointer:
    def __init__(self, path: Path, *, every_s: float = 0.5) -> None:
        self._path = path
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoints", daemon=True)

    def __enter__(self) -> Checkpointer:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, timeout=RESTART_WAIT_MS / 1000)
        try:
            while True:
                stopping = self._stop.wait(self._every_s)
                with contextlib.suppress(sqlite3.Error):  # busy: the next round catches up
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
                if stopping:
                    return
        finally:
            db.close()
