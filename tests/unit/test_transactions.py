"""The task database's transactions: one per change, or grouped commits; and the
checkpointer that keeps the WAL from growing without the request path paying for it."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from stager.errors import StagerError
from worker_hooks.dispatch.checkpoint import Checkpointer
from worker_hooks.dispatch.taskdb import Limits, TaskDB
from worker_hooks.dispatch.transactions import Transactions
from worker_hooks.task.parse import parse_spec


@pytest.fixture
def tables(tmp_path: Path) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """A connection that changes the file, and another that reads it."""
    path = tmp_path / "db.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (n INTEGER)")
    return db, sqlite3.connect(path, isolation_level=None)


def rows(reader: sqlite3.Connection) -> list[int]:
    return [n for (n,) in reader.execute("SELECT n FROM t ORDER BY n")]


def grouped(db: sqlite3.Connection) -> tuple[Transactions, list[int]]:
    """Transactions in groups, and a list that grows by one as each group opens."""
    transactions, opened = Transactions(db), []
    transactions.group(lambda: opened.append(1))
    return transactions, opened


def insert(transactions: Transactions, n: int) -> None:
    with transactions.change() as tx:
        tx.execute("INSERT INTO t VALUES (?)", (n,))


def test_grouped_changes_commit_together_and_an_error_undoes_its_own_alone(
    tables: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    db, reader = tables
    transactions, opened = grouped(db)
    for n in range(3):
        insert(transactions, n)
    with pytest.raises(ZeroDivisionError), transactions.change() as tx:
        tx.execute("INSERT INTO t VALUES (99)")
        raise ZeroDivisionError
    with transactions.change(dry_run=True) as tx:
        tx.execute("INSERT INTO t VALUES (98)")
    assert opened == [1] and rows(reader) == []  # one group, not committed yet
    transactions.commit()
    assert rows(reader) == [0, 1, 2]
    insert(transactions, 3)
    assert opened == [1, 1]  # the next change opened the next group
    transactions.group(None)  # commits what is open; one transaction per change again
    assert rows(reader) == [0, 1, 2, 3]
    insert(transactions, 4)
    assert rows(reader) == [0, 1, 2, 3, 4] and opened == [1, 1]


def test_a_group_sqlite_rolled_back_fails_whole_and_the_next_group_is_sound(
    tables: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    db, reader = tables
    transactions, opened = grouped(db)
    insert(transactions, 1)
    with pytest.raises(StagerError, match="disk is full"), transactions.change() as tx:
        tx.execute("INSERT INTO t VALUES (2)")
        tx.execute("ROLLBACK")  # as SQLite does itself on a full disk
        raise sqlite3.OperationalError("database or disk is full")
    insert(transactions, 3)  # made before the group's commit: fails with it
    with pytest.raises(StagerError, match="rolled back"):
        transactions.commit()
    assert rows(reader) == [] and not db.in_transaction
    insert(transactions, 4)
    transactions.commit()
    assert rows(reader) == [4] and len(opened) == 3


def test_without_a_group_each_change_is_its_own_transaction(
    tables: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    db, reader = tables
    transactions = Transactions(db)
    insert(transactions, 1)
    assert rows(reader) == [1]
    with pytest.raises(ZeroDivisionError), transactions.change() as tx:
        tx.execute("INSERT INTO t VALUES (2)")
        raise ZeroDivisionError
    assert rows(reader) == [1] and not db.in_transaction


def wal_after_writes(path: Path, *, checkpointer: bool) -> int:
    db = TaskDB(path, Limits())
    db.checkpoint_elsewhere()
    try:
        with Checkpointer(path, every_s=0.01) if checkpointer else contextlib.nullcontext():
            for batch in range(30):
                specs = [
                    parse_spec(
                        {"id": f"t{batch}-{n}", "command": ["true"], "results": "s3://bkt/r/"}
                    )
                    for n in range(100)
                ]
                db.submit("wf", specs)
                time.sleep(0.02)  # as between a server's requests
        return path.with_name(path.name + "-wal").stat().st_size
    finally:
        db.close()


def test_the_checkpointer_starts_the_wal_over_while_writes_go_on(tmp_path: Path) -> None:
    grown = wal_after_writes(tmp_path / "alone.sqlite", checkpointer=False)
    kept = wal_after_writes(tmp_path / "checkpointed.sqlite", checkpointer=True)
    assert kept * 4 < grown, (kept, grown)
