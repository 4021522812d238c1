"""The replica catalog: which node holds which digest, where nodes serve, what only nodes hold.

Three tables of the dispatcher's database (schema in
:mod:`worker_hooks.dispatch.taskdb`): ``workers`` (last contact, cache
size, file-service address, until when it is suspect, when it was found
lost), ``replicas`` (worker, digest) and ``outputs`` (every output of a
completed task, where it was kept and whether S3 has it yet).

It is fed by workers' first full cache reports, heartbeat deltas,
completions and write-behind confirmations; it answers the scheduler (who
holds what), leases (which peers hold a task's inputs, where to mirror),
``stager status`` (outputs only on nodes) and recovery (what a lost node
took with it). Runs inside the transactions of :class:`TaskDB`, which owns
the connection; never opens its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from stager.digest import Digest
from worker_hooks.dispatch.recovery import AtRisk
from worker_hooks.dispatch.scheduling import Candidate
from worker_hooks.task.protocol import Lease, NodeOnly, Replica, Written
from worker_hooks.task.result import Persist, ResultManifest


def rows_in(
    db: sqlite3.Connection, query: str, values: Sequence[str], before: Sequence[Any] = ()
) -> Iterator[sqlite3.Row]:
    """Rows of ``query`` (ending in ``IN ({marks})``) for ``values``, in chunks.

    SQLite caps the variables of one statement (999 in older builds), and a
    workflow may name tens of thousands of tasks or digests.
    """
    for start in range(0, len(values), 500):
        chunk = list(values[start : start + 500])
        marks = ",".join("?" * len(chunk))
        yield from db.execute(query.format(marks=marks), [*before, *chunk])


class ReplicaCatalog:
    def __init__(
        self, db: sqlite3.Connection, *, clock: Callable[[], float], worker_timeout_s: float
    ) -> None:
        self._db = db
        self._clock = clock
        self.worker_timeout_s = worker_timeout_s

    def _alive_after(self) -> float:
        return self._clock() - self.worker_timeout_s

    # -- workers --------------------------------------------------------------------

    def touch_worker(
        self,
        worker: str,
        *,
        cache_bytes: int | None = None,
        address: str | None = None,
        revive: bool = False,
    ) -> bool:
        """A sign of life; True if the worker had been found lost. With ``revive`` (a
        heartbeat, which can carry the answer), it is taken back: it must then report
        its whole cache (its replicas were forgotten) and drop the writes behind it
        still owed (recovery planned without them)."""
        row = self._db.execute("SELECT lost_at FROM workers WHERE id = ?", (worker,)).fetchone()
        self._db.execute(
            "INSERT INTO workers (id, last_seen, cache_bytes, address) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen,"
            " cache_bytes = COALESCE(?, workers.cache_bytes),"
            " address = COALESCE(excluded.address, workers.address),"
            " lost_at = CASE WHEN ? THEN NULL ELSE workers.lost_at END",
            (worker, self._clock(), cache_bytes or 0, address, cache_bytes, revive),
        )
        return row is not None and row["lost_at"] is not None

    def grace(self, now: float) -> None:
        """Count every worker not found lost as seen at ``now`` (the dispatcher restarted)."""
        self._db.execute(
            "UPDATE workers SET last_seen = MAX(last_seen, ?) WHERE lost_at IS NULL", (now,)
        )

    def suspect(self, addresses: Sequence[str]) -> None:
        """Peers that failed a worker: offered to no one for a while (they may be dead)."""
        until = self._clock() + self.worker_timeout_s
        self._db.executemany(
            "UPDATE workers SET suspect_until = ? WHERE address = ?",
            [(until, address) for address in addresses],
        )

    def silent_workers(self, silent_s: float) -> list[str]:
        """Workers not yet found lost that have been silent for ``silent_s``."""
        rows = self._db.execute(
            "SELECT id FROM workers WHERE lost_at IS NULL AND last_seen < ? ORDER BY id",
            (self._clock() - silent_s,),
        )
        return [row["id"] for row in rows]

    def mark_lost(self, worker: str) -> None:
        """The worker and its cache are gone: none of its replicas counts any more."""
        self._db.execute("UPDATE workers SET lost_at = ? WHERE id = ?", (self._clock(), worker))
        self._db.execute("DELETE FROM replicas WHERE worker = ?", (worker,))

    # -- replicas -------------------------------------------------------------------

    def report_cache(
        self, worker: str, *, added: Sequence[Digest], removed: Sequence[Digest], full: bool
    ) -> None:
        """Record what ``worker``'s cache gained and lost (or, with ``full``, all it holds)."""
        if full:
            self._db.execute("DELETE FROM replicas WHERE worker = ?", (worker,))
        self._db.executemany(
            "INSERT OR IGNORE INTO replicas (worker, digest) VALUES (?, ?)",
            [(worker, str(d)) for d in added],
        )
        self._db.executemany(
            "DELETE FROM replicas WHERE worker = ? AND digest = ?",
            [(worker, str(d)) for d in removed],
        )

    def holders(self, digests: set[Digest]) -> dict[Digest, frozenset[str]]:
        """The live workers holding each digest."""
        if not digests:
            return {}
        rows = rows_in(
            self._db,
            "SELECT r.digest, r.worker FROM replicas r JOIN workers w ON w.id = r.worker"
            " WHERE w.last_seen >= ? AND w.lost_at IS NULL AND r.digest IN ({marks})",
            sorted(str(d) for d in digests),
            before=[self._alive_after()],
        )
        holders: dict[Digest, set[str]] = {}
        for row in rows:
            holders.setdefault(Digest.parse(row["digest"]), set()).add(row["worker"])
        return {digest: frozenset(workers) for digest, workers in holders.items()}

    def _peer_addresses(
        self, digests: set[Digest], *, besides: str
    ) -> dict[Digest, tuple[str, ...]]:
        """Live, unsuspected file services of other workers holding each digest."""
        if not digests:
            return {}
        rows = rows_in(
            self._db,
            "SELECT r.digest, w.address FROM replicas r JOIN workers w ON w.id = r.worker"
            " WHERE w.last_seen >= ? AND w.suspect_until <= ? AND w.address IS NOT NULL"
            " AND w.lost_at IS NULL AND w.id != ? AND r.digest IN ({marks})"
            " ORDER BY w.cache_bytes",
            sorted(str(d) for d in digests),
            before=[self._alive_after(), self._clock(), besides],
        )
        found: dict[Digest, list[str]] = {}
        for row in rows:
            found.setdefault(Digest.parse(row["digest"]), []).append(row["address"])
        return {digest: tuple(addresses) for digest, addresses in found.items()}

    def _mirror_targets(self, besides: str, count: int = 8) -> tuple[str, ...]:
        """Live, unsuspected file services of other workers, emptiest cache first."""
        rows = self._db.execute(
            "SELECT address FROM workers WHERE last_seen >= ? AND suspect_until <= ?"
            " AND address IS NOT NULL AND lost_at IS NULL AND id != ?"
            " ORDER BY cache_bytes, id LIMIT ?",
            (self._alive_after(), self._clock(), besides, count),
        )
        return tuple(row["address"] for row in rows)

    def unreachable(self, candidates: Sequence[Candidate], worker: str) -> set[str]:
        """Candidates reading an output that only nodes hold and that ``worker`` cannot get:
        not in its own cache, and no live, unsuspected peer serves it."""
        wanted = {digest for c in candidates for digest, _ in c.inputs}
        if not wanted:
            return set()
        rows = rows_in(
            self._db,
            "SELECT digest, MAX(in_s3) AS in_s3 FROM outputs WHERE digest IN ({marks})"
            " GROUP BY digest",
            sorted(str(d) for d in wanted),
        )
        on_nodes = {Digest.parse(r["digest"]) for r in rows if not r["in_s3"]}
        if not on_nodes:
            return set()
        own = rows_in(
            self._db,
            "SELECT digest FROM replicas WHERE worker = ? AND digest IN ({marks})",
            sorted(str(d) for d in on_nodes),
            before=[worker],
        )
        reachable = {Digest.parse(r["digest"]) for r in own}
        reachable |= set(self._peer_addresses(on_nodes - reachable, besides=worker))
        missing = on_nodes - reachable
        return {c.task_id for c in candidates if any(d in missing for d, _ in c.inputs)}

    def with_peers(self, leases: list[Lease], worker: str) -> list[Lease]:
        """The leases with the peers that hold their inputs and where to mirror outputs."""
        if not leases:
            return leases
        wanted = {digest for lease in leases for digest, _ in lease.spec.known_inputs()}
        holders = self._peer_addresses(wanted, besides=worker)
        mirrored = any(o.persist is Persist.MIRROR for lease in leases for o in lease.spec.outputs)
        targets = self._mirror_targets(worker) if mirrored else ()
        return [
            replace(
                lease,
                peers=tuple(
                    Replica(digest, holders[digest])
                    for digest, _ in lease.spec.known_inputs()
                    if digest in holders
                ),
                mirror_to=targets,
            )
            for lease in leases
        ]

    # -- outputs --------------------------------------------------------------------

    def record_outputs(self, task_id: str, workflow: str, result: ResultManifest) -> None:
        self._db.execute("DELETE FROM outputs WHERE task = ?", (task_id,))
        self._db.executemany(
            "INSERT INTO outputs (task, workflow, url, digest, size, kept, in_s3)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    task_id,
                    workflow,
                    str(r.url),
                    str(r.digest),
                    r.size,
                    r.kept.value,
                    r.kept is Persist.S3,
                )
                for r in result.outputs
            ],
        )

    def at_risk(self, worker: str) -> list[AtRisk]:
        """Outputs not in S3 that ``worker``'s cache holds (to ask, before it is lost)."""
        rows = self._db.execute(
            "SELECT o.task, o.digest, o.kept, o.size FROM outputs o JOIN replicas r"
            " ON r.digest = o.digest WHERE r.worker = ? AND o.in_s3 = 0 ORDER BY o.task",
            (worker,),
        )
        return [
            AtRisk(r["task"], Digest.parse(r["digest"]), Persist(r["kept"]), r["size"])
            for r in rows
        ]

    def forget_outputs(self, task_id: str) -> None:
        self._db.execute("DELETE FROM outputs WHERE task = ?", (task_id,))

    def mark_written(self, written: Sequence[Written]) -> None:
        self._db.executemany(
            "UPDATE outputs SET in_s3 = 1 WHERE digest = ? AND url = ?",
            [(str(w.digest), str(w.url)) for w in written],
        )

    def written_behind(self, workflow: str | None) -> int:
        """Bytes of outputs kept on nodes that have reached S3 since."""
        where, args = ("AND workflow = ?", (workflow,)) if workflow else ("", ())
        row = self._db.execute(
            f"SELECT SUM(size) FROM outputs WHERE in_s3 = 1 AND kept != 's3' {where}", args
        ).fetchone()
        return int(row[0] or 0)

    def node_only(self, workflow: str | None) -> tuple[NodeOnly, ...]:
        """Per workflow, the outputs that are on nodes and not (yet) in S3."""
        where, args = ("AND workflow = ?", (workflow,)) if workflow else ("", ())
        rows = self._db.execute(
            "SELECT workflow, COUNT(*) AS n, SUM(size) AS bytes FROM outputs"
            f" WHERE in_s3 = 0 {where} GROUP BY workflow ORDER BY workflow",
            args,
        )
        return tuple(NodeOnly(r["workflow"], r["n"], r["bytes"] or 0) for r in rows)
