"""The task database's transactions: one per change, or grouped commits.

By default each change is a transaction of its own (``BEGIN IMMEDIATE`` ...
``COMMIT``). A server answering many requests at once groups them
(:meth:`Transactions.group`): the first change opens a transaction, and
each change is a savepoint in it; an error, or a dry run, undoes that change
alone. The server commits the group once per turn of its event loop and
answers the requests whose changes it holds only after that commit. So N
changes cost one commit, and the index pages they share are written to the
WAL once, not N times (the write-ahead log written per lease and per
completion was the dispatcher's largest cost under a thousand workers).

Not thread-safe: one owner calls it, as it does the database.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator

from stager.errors import StagerError


class Transactions:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._on_open: Callable[[], None] | None = None
        self._open = False
        self._broken = False  # the open group's transaction was rolled back under it

    @contextlib.contextmanager
    def change(self, *, dry_run: bool = False) -> Iterator[sqlite3.Connection]:
        """One change: kept when the block ends, undone (alone) on an exception or when
        ``dry_run``. Grouped, it is durable only once :meth:`commit` has run."""
        grouped = self._on_open is not None
        if grouped:
            self._begin_group()
            self._db.execute("SAVEPOINT change")
        else:
            self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except sqlite3.Error as exc:  # a full disk, an I/O error: said in one line
            self._undo(grouped)
            raise _refused("could not make a change", exc) from exc
        except BaseException:
            self._undo(grouped)
            raise
        if dry_run:
            self._undo(grouped)
        else:
            self._db.execute("RELEASE change" if grouped else "COMMIT")

    def _begin_group(self) -> None:
        if not self._open:
            self._db.execute("BEGIN IMMEDIATE")
            self._open = True
            assert self._on_open is not None
            self._on_open()

    def _undo(self, grouped: bool) -> None:
        if not self._db.in_transaction:
            # SQLite rolled the whole transaction back itself (it does on a full disk
            # or an I/O error): a group's other changes went with it, so its commit
            # must fail, and the next change opens a transaction anew.
            if grouped:
                self._broken, self._open = True, False
            return
        if grouped:
            self._db.execute("ROLLBACK TO change")
            self._db.execute("RELEASE change")
        else:
            self._db.execute("ROLLBACK")

    def group(self, on_open: Callable[[], None] | None) -> None:
        """Group the changes from now on: the first change after each commit opens a
        transaction and calls ``on_open``, which must see that :meth:`commit` runs
        soon. None: commit what is open, and go back to a transaction per change."""
        if on_open is None:
            self.commit()
        self._on_open = on_open

    def commit(self) -> None:
        """Commit the group's changes, if any (a failed commit rolls them all back, and
        raises; so does a group that lost some of its changes to a rollback SQLite
        made itself, with every change made since)."""
        opened, broken = self._open, self._broken
        self._open = self._broken = False
        if not opened and not broken:
            return
        try:
            if broken or not self._db.in_transaction:
                raise sqlite3.OperationalError("the transaction was rolled back")
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise _refused("could not commit", exc) from exc


def _refused(what: str, exc: sqlite3.Error) -> StagerError:
    return StagerError(
        f"the task database {what}: {exc}", hint="check the disk that holds the task database"
    )
