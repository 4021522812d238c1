"""The task database's file: made private, opened in WAL mode, its schema made,
migrated in place from versions 1 to 5, or refused when it is another's.

The file records its schema version (``PRAGMA user_version``). Columns added
since version 3 are added to an older file's tables; version 5 qualified task
ids by their workflow; version 6 added the memo, filled from the results the
file holds.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from stager.errors import ConfigError, from_os_error
from worker_hooks.dispatch.transactions import Transactions

# 2 learned digests, 3 node addresses and outputs, 4 depth, 5 each and ids per workflow,
# 6 the memo (results by task key)
SCHEMA_VERSION = 6  # (all migrated in place)
WAL_KEPT_BYTES = 64 * 1024 * 1024  # the WAL file's size once a checkpoint has emptied it
SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    workflow TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_expires REAL,
    submitted_at REAL NOT NULL,
    queued_at REAL,
    finished_at REAL,
    inputs TEXT NOT NULL DEFAULT '[]',
    result TEXT,
    error TEXT,
    bytes_from_s3 INTEGER NOT NULL DEFAULT 0,
    bytes_from_cache INTEGER NOT NULL DEFAULT 0,
    bytes_from_peers INTEGER NOT NULL DEFAULT 0,
    submitted TEXT,
    reruns INTEGER NOT NULL DEFAULT 0,
    depth INTEGER NOT NULL DEFAULT 0,
    memoized INTEGER NOT NULL DEFAULT 0,
    mapped INTEGER NOT NULL DEFAULT 0,
    members INTEGER,
    member_of TEXT
);
-- tasks_ready's first column serves every look-up by state: one index less to keep
-- up on each change of state.
DROP INDEX IF EXISTS tasks_by_state;
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks(state, depth DESC, seq);
DROP INDEX IF EXISTS tasks_by_workflow;
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(
    workflow, state, submitted_at, finished_at, bytes_from_s3, bytes_from_cache,
    bytes_from_peers, memoized
);
CREATE INDEX IF NOT EXISTS tasks_by_template ON tasks(member_of);
CREATE TABLE IF NOT EXISTS deps (
    task TEXT NOT NULL, producer TEXT NOT NULL, PRIMARY KEY (task, producer)
);
CREATE INDEX IF NOT EXISTS deps_by_producer ON deps(producer);
CREATE TABLE IF NOT EXISTS edges (
    task TEXT NOT NULL, producer TEXT NOT NULL, PRIMARY KEY (task, producer)
);
CREATE INDEX IF NOT EXISTS edges_by_producer ON edges(producer);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY, last_seen REAL NOT NULL, cache_bytes INTEGER NOT NULL DEFAULT 0,
    address TEXT, suspect_until REAL NOT NULL DEFAULT 0, lost_at REAL
);
CREATE TABLE IF NOT EXISTS replicas (
    worker TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (worker, digest)
);
CREATE INDEX IF NOT EXISTS replicas_by_digest ON replicas(digest);
CREATE TABLE IF NOT EXISTS learned (
    url TEXT PRIMARY KEY, digest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outputs (
    task TEXT NOT NULL, workflow TEXT NOT NULL, url TEXT NOT NULL, digest TEXT NOT NULL,
    size INTEGER NOT NULL, kept TEXT NOT NULL, in_s3 INTEGER NOT NULL,
    PRIMARY KEY (task, url)
);
CREATE INDEX IF NOT EXISTS outputs_on_nodes ON outputs(in_s3, workflow);
CREATE INDEX IF NOT EXISTS outputs_by_digest ON outputs(digest);
CREATE TABLE IF NOT EXISTS assignments (
    task TEXT NOT NULL, attempt INTEGER NOT NULL, worker TEXT NOT NULL, at REAL NOT NULL,
    ended_at REAL, outcome TEXT, error TEXT, logs TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS assignments_by_task ON assignments(task, attempt);
CREATE TABLE IF NOT EXISTS memo (
    key TEXT PRIMARY KEY, result TEXT NOT NULL
) WITHOUT ROWID;
"""

# Columns that versions 3 to 5 added to tables of earlier versions (migrated in place).
ADDED_COLUMNS = (
    ("tasks", "bytes_from_peers", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "submitted", "TEXT"),
    ("tasks", "reruns", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "depth", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "memoized", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "mapped", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "members", "INTEGER"),
    ("tasks", "member_of", "TEXT"),
    ("assignments", "ended_at", "REAL"),
    ("assignments", "outcome", "TEXT"),
    ("assignments", "error", "TEXT"),
    ("assignments", "logs", "TEXT NOT NULL DEFAULT '[]'"),
    ("workers", "address", "TEXT"),
    ("workers", "suspect_until", "REAL NOT NULL DEFAULT 0"),
    ("workers", "lost_at", "REAL"),
)


def open_database(path: Path, *, wal_kept_bytes: int = WAL_KEPT_BYTES) -> sqlite3.Connection:
    """The database at ``path`` (made if new, its owner's only), in WAL mode."""
    _private_file(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    # A burst of writes (a large submit) grows the WAL file, and SQLite reuses it at
    # that size from then on: cut it back to this whenever a checkpoint empties it.
    db.execute(f"PRAGMA journal_size_limit={int(wal_kept_bytes)}")
    return db


def ensure_schema(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables in a new file, migrate an older one in place; refuse (closing
    it) a file of another schema version."""
    with Transactions(db).change():
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        if (version == 0 and tables == 0) or version in (1, 2, 3, 4, 5):  # new, or migrated
            for table, column, kind in ADDED_COLUMNS if version else ():
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            for statement in SCHEMA.split(";"):
                db.execute(statement)
            if version and version < 5:
                _qualify_ids(db)
            if version:  # the memo starts with the results the file holds
                db.execute(
                    "INSERT OR IGNORE INTO memo (key, result)"
                    " SELECT json_extract(result, '$.task_key'), result FROM tasks"
                    " WHERE state = 'done' AND result IS NOT NULL"
                )
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return
    if version != SCHEMA_VERSION:
        db.close()
        raise ConfigError(
            f"the task database {path} has schema version {version}; this stager "
            f"reads version {SCHEMA_VERSION}",
            hint="give a new --db path, or use the stager version that wrote it",
        )


def _private_file(path: Path) -> None:
    """Make the database file (task specs hold their ``env``) its owner's only.

    SQLite gives its -wal and -shm files the database file's mode.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(path, 0o600)  # a file made before this rule, or by hand
    except OSError as exc:
        raise from_os_error(exc, f"open the task database {path}") from exc


def _qualify_ids(db: sqlite3.Connection) -> None:
    """Version 5: a task is known as ``<workflow>/<id>`` everywhere in the file."""
    db.execute("CREATE TEMP TABLE renamed (old TEXT PRIMARY KEY, new TEXT NOT NULL)")
    db.execute("INSERT INTO renamed SELECT id, workflow || '/' || id FROM tasks")
    new = "COALESCE((SELECT new FROM renamed WHERE old = {0}), {0})"
    for table, columns in (
        ("deps", ("task", "producer")),
        ("edges", ("task", "producer")),
        ("outputs", ("task",)),
        ("assignments", ("task",)),
        ("tasks", ("id",)),
    ):
        changes = ", ".join(f"{column} = {new.format(column)}" for column in columns)
        db.execute(f"UPDATE {table} SET {changes}")
    db.execute("DROP TABLE renamed")
