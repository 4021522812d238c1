"""The dispatcher's state: tasks, leases, dependencies and replicas, in SQLite (WAL).

Task states::

    waiting --(producers committed)--> queued --(lease)--> leased --(complete)--> done
       |                                 ^                   |
       +--(a producer failed)--> failed  +--(expire, release,+--(fail, expire past the
                                          retryable fail)        limit)--> failed
    any state but done --(cancel)--> cancelled

Guarantees:

- ``attempt`` is the fencing token: every lease bumps it, and ``complete``,
  ``fail``, ``release`` and heartbeats are accepted only from the current
  attempt of a leased task (:class:`StaleAttemptError` otherwise), so a late
  worker never overwrites an accepted result (DESIGN.md invariant 6).
- Every change is one transaction; a restarted dispatcher resumes from the
  file (leases in flight keep their expiry and are honoured or expire).
- A producer's failure fails its dependants, transitively, with the reason.
- Rows are parsed at the edge: what leaves this class is typed (specs,
  results, protocol messages), never a row or a ``dict``.
- The file records its schema version (``PRAGMA user_version``); a file of
  another version is refused with a message naming both, never misread
  (:mod:`~worker_hooks.dispatch.schema`).

Its reads (tasks, reports, status) are those of
:class:`~worker_hooks.dispatch.views.TaskViews`, which it extends; its
transactions, one per change or grouped, are a
:class:`~worker_hooks.dispatch.transactions.Transactions`.

Not thread-safe: one owner (the server's event loop) calls it.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stager.digest import Digest
from stager.errors import (
    ConfigError,
    NotFoundError,
    PreconditionFailedError,
    StagerError,
    StaleAttemptError,
)
from stager.locations import S3Url
from worker_hooks.dispatch.catalog import ReplicaCatalog, rows_in
from worker_hooks.dispatch.recovery import plan_recovery
from worker_hooks.dispatch.scheduling import Candidate, Policy, choose_tasks
from worker_hooks.dispatch.schema import ensure_schema, open_database
from worker_hooks.dispatch.transactions import Transactions
from worker_hooks.dispatch.views import TaskViews, result_of
from worker_hooks.task.key import key_of_spec
from worker_hooks.task.mapping import ITEM_VARIABLE, group_result, members
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.protocol import (
    Completion,
    HeartbeatReply,
    InputUse,
    Lease,
    RecoveryReport,
    RetryRequest,
    SubmitReply,
    TaskState,
    Written,
)
from worker_hooks.task.result import ResultManifest
from worker_hooks.task.spec import TaskSpec, qualified_id, task_of, valid_task_id
from worker_hooks.task.workflow import check_batch

FINAL_STATES = tuple(state.value for state in TaskState if state.final)
SETTLED = ("done", "cancelled")  # what recovery leaves alone (a failed task may run again)


@dataclass(frozen=True, kw_only=True)
class Limits:
    lease_s: float = 60.0
    max_failures: int = 3
    worker_timeout_s: float = 30.0
    starvation_s: float = 60.0
    policy: Policy = Policy.GOOD_CACHE_COMPUTE
    candidate_window: int = 256


def _spec_columns(spec: TaskSpec) -> tuple[str, str]:
    """The ``body`` and ``inputs`` columns of a task.

    ``inputs`` lists ``[digest, size]`` for inputs whose digest is known and
    ``[null, size, url]`` for the others, whose digest may be learned later.
    """
    known: list[list[Any]] = [[str(digest), size] for digest, size in spec.known_inputs()]
    known += [[None, size, str(url)] for url, size in spec.unknown_inputs()]
    return json.dumps(spec.to_json()), json.dumps(known)


def _spec_of(row: sqlite3.Row) -> TaskSpec:
    return parse_spec(json.loads(row["body"]))


def _submitted_body(row: sqlite3.Row) -> str:
    """The spec as submitted (rows of version 2 and older kept only the resolved one)."""
    return str(row["submitted"] or row["body"])


def _submitted_spec(row: sqlite3.Row) -> TaskSpec:
    return parse_spec(json.loads(_submitted_body(row)))


class _View:
    """What recovery planning asks of the database (:class:`~recovery.CatalogView`)."""

    def __init__(self, db: sqlite3.Connection, catalog: ReplicaCatalog) -> None:
        self._db = db
        self._catalog = catalog

    def _first(self, query: str, *args: object) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(query, args).fetchone()
        return row

    def available(self, digest: Digest) -> bool:
        if self.producer_of(digest) is None:
            return True  # an object in S3, not a task's output
        if self._first("SELECT 1 FROM outputs WHERE digest = ? AND in_s3 = 1", str(digest)):
            return True
        return bool(self._catalog.holders({digest}))

    def consumers(self, digest: Digest) -> list[str]:
        rows = self._db.execute(
            f"SELECT id FROM tasks WHERE state NOT IN {SETTLED} AND inputs LIKE ?",
            (f"%{digest}%",),
        )
        return [row["id"] for row in rows]

    def ever_consumed(self, digest: Digest) -> bool:
        return self._first("SELECT 1 FROM tasks WHERE inputs LIKE ?", f"%{digest}%") is not None

    def producer_of(self, digest: Digest) -> str | None:
        row = self._first("SELECT task FROM outputs WHERE digest = ?", str(digest))
        return None if row is None else str(row["task"])

    def inputs_of(self, task: str) -> list[Digest]:
        row = self._first("SELECT inputs FROM tasks WHERE id = ?", task)
        known = json.loads(row["inputs"]) if row else []
        return [Digest.parse(item[0]) for item in known if item[0]]

    def dependants(self, task: str) -> list[str]:
        rows = self._db.execute(
            "SELECT e.task FROM edges e JOIN tasks t ON t.id = e.task"
            f" WHERE e.producer = ?1 AND (t.state NOT IN {SETTLED}"
            "  OR t.id = (SELECT member_of FROM tasks WHERE id = ?1))",  # a member's template
            (task,),
        )
        return [row["task"] for row in rows]


class TaskDB(TaskViews):
    def __init__(
        self, path: Path, limits: Limits, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._db = open_database(path)
        self.transactions = Transactions(self._db)
        ensure_schema(self._db, path)
        super().__init__(
            self._db,
            ReplicaCatalog(self._db, clock=clock, worker_timeout_s=limits.worker_timeout_s),
            clock=clock,
            worker_timeout_s=limits.worker_timeout_s,
            policy=limits.policy,
        )

    def close(self) -> None:
        self._db.close()

    def checkpoint_elsewhere(self) -> None:
        """Make no automatic WAL checkpoint in a commit (a
        :class:`~worker_hooks.dispatch.checkpoint.Checkpointer` makes them)."""
        self._db.execute("PRAGMA wal_autocheckpoint = 0")

    def _tx(self, *, dry_run: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        return self.transactions.change(dry_run=dry_run)

    # -- submitting ---------------------------------------------------------------

    def submitted_specs(self, workflow: str, ids: Sequence[str]) -> dict[str, TaskSpec]:
        """The specs as submitted of those of ``ids`` that ``workflow`` has."""
        keys = [qualified_id(workflow, task_id) for task_id in ids]
        rows = rows_in(self._db, "SELECT submitted, body FROM tasks WHERE id IN ({marks})", keys)
        specs = (_submitted_spec(row) for row in rows)
        return {spec.id: spec for spec in specs}

    def submit(self, workflow: str, specs: Sequence[TaskSpec]) -> SubmitReply:
        """Check tasks (see :func:`check_batch`) and add them to ``workflow``.

        Task ids are unique within a workflow (the dispatcher knows a task as
        ``<workflow>/<id>``). Submitting a workflow again: a task submitted
        before under the same id and spec is kept as it is (a finished one is
        not run again) unless it failed or was cancelled; a task whose spec
        changed takes the new one. Both of those run again, and so does
        everything downstream of a changed task (its inputs may change; a
        dependant whose inputs turn out the same finds its memo).
        """
        if not valid_task_id(workflow):
            raise ConfigError(
                f"workflow name {workflow[:80]!r} is not 1-128 letters, digits, '.', '_' or '-'",
                hint="name the workflow in its file (name: ...) or rename the file",
            )
        check_batch(specs, known=functools.partial(self.submitted_specs, workflow))
        now = self._clock()
        key = functools.partial(qualified_id, workflow)
        with self._tx() as db:
            before = {
                task_of(row["id"]): row
                for row in rows_in(
                    db,
                    "SELECT id, state, submitted, body FROM tasks WHERE id IN ({marks})",
                    [key(spec.id) for spec in specs],
                )
            }
            depths = self._depths(workflow, specs)
            new = [spec for spec in specs if spec.id not in before]
            changed = [
                spec
                for spec in specs
                if spec.id in before and _spec_columns(spec)[0] != _submitted_body(before[spec.id])
            ]
            retried = [
                key(spec.id)
                for spec in specs
                if spec.id in before
                and spec not in changed
                and before[spec.id]["state"] in ("failed", "cancelled")
            ]
            for spec in new:
                self._insert(workflow, spec, depths[spec.id], now)
            for spec in changed:
                self._replace(workflow, spec, depths[spec.id])
            again = self._downstream([key(spec.id) for spec in changed]) | set(retried)
            for task in sorted(again, key=lambda t: depths.get(task_of(t), 0)):
                self._restart(task, again, rerun=False, now=now)
            for spec in new:
                for producer in sorted(spec.producers):
                    row = self._row(key(producer))
                    if row["state"] == "done":
                        self._satisfy(key(spec.id), row["id"], result_of(row["result"]), now)
                    elif row["state"] in ("failed", "cancelled"):
                        reason = f"producer {producer} {row['state']}"
                        self._fail_chain(key(spec.id), reason, now)
                self._queue_if_ready(key(spec.id), now)
        again_ids = {task_of(task) for task in again}
        return SubmitReply(
            submitted=tuple(spec.id for spec in new),
            again=tuple(sorted(again_ids)),
            kept=tuple(sorted(set(before) - again_ids)),
        )

    def retry(self, workflow: str, request: RetryRequest) -> SubmitReply:
        """Send the workflow's failed (and cancelled, unless ``only_failed``) tasks back to
        run, with the dependants that failed with them; the ids are in ``again``."""
        states = ("failed",) if request.only_failed else ("failed", "cancelled")
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, state FROM tasks"
                " WHERE workflow = ? AND state IN ('failed', 'cancelled')",
                (workflow,),
            ).fetchall()
            if not rows and not any(self.counts(workflow).values()):
                raise NotFoundError(f"no workflow {workflow!r}", hint="see `stager status`")
            ended = {row["id"] for row in rows if row["state"] in states}
            named = {qualified_id(workflow, task_id) for task_id in request.tasks}
            unknown = sorted(task_of(task) for task in named - ended)
            if unknown:
                raise PreconditionFailedError(
                    f"task {unknown[0]} is not a {' or '.join(states)} task of workflow {workflow}",
                    hint="name tasks that did not succeed, or none to retry them all",
                )
            chosen = named or ended
            again = {t for t in self._downstream(sorted(chosen)) if t in ended}
            now = self._clock()
            for task_id in sorted(again):
                self._restart(task_id, again, rerun=False, now=now)
        return SubmitReply(submitted=(), again=tuple(sorted(task_of(task) for task in again)))

    def _insert(
        self, workflow: str, spec: TaskSpec, depth: int, now: float, member_of: str | None = None
    ) -> None:
        body, inputs = _spec_columns(spec)
        task = qualified_id(workflow, spec.id)
        self._db.execute(
            "INSERT INTO tasks (id, workflow, body, submitted, state, submitted_at, inputs, depth,"
            " mapped, member_of) VALUES (?, ?, ?, ?, 'waiting', ?, ?, ?, ?, ?)",
            (task, workflow, body, body, now, inputs, depth, spec.mapped, member_of),
        )
        for table in ("deps", "edges"):  # deps: not yet satisfied; edges: for good
            self._db.executemany(
                f"INSERT INTO {table} (task, producer) VALUES (?, ?)",
                [(task, qualified_id(workflow, producer)) for producer in spec.producers],
            )

    def _replace(self, workflow: str, spec: TaskSpec, depth: int) -> None:
        """Give a known task a new spec (it is then restarted with the others)."""
        body, _ = _spec_columns(spec)
        task = qualified_id(workflow, spec.id)
        self._db.execute(
            "UPDATE tasks SET submitted = ?, depth = ? WHERE id = ?", (body, depth, task)
        )
        self._db.execute("DELETE FROM edges WHERE task = ?", (task,))
        self._db.executemany(
            "INSERT INTO edges (task, producer) VALUES (?, ?)",
            [(task, qualified_id(workflow, producer)) for producer in spec.producers],
        )

    def _downstream(self, tasks: Sequence[str]) -> set[str]:
        """``tasks`` and every task that depends on one of them, transitively."""
        found = set(tasks)
        frontier = list(tasks)
        while frontier:
            rows = self._db.execute("SELECT task FROM edges WHERE producer = ?", (frontier.pop(),))
            for row in rows.fetchall():
                if row["task"] not in found:
                    found.add(row["task"])
                    frontier.append(row["task"])
        return found

    def _depths(self, workflow: str, specs: Sequence[TaskSpec]) -> dict[str, int]:
        """How far down its workflow each task is: 0 without producers, else one more
        than its deepest producer (in this batch, or submitted before)."""
        producers = {spec.id: spec.producers for spec in specs}
        earlier = {p for spec in specs for p in spec.producers} - producers.keys()
        depths = {
            task_of(row["id"]): row["depth"]
            for row in rows_in(
                self._db,
                "SELECT id, depth FROM tasks WHERE id IN ({marks})",
                [qualified_id(workflow, task) for task in sorted(earlier)],
            )
        }
        for spec in specs:  # an explicit stack: a chain may be longer than Python's recursion
            stack = [spec.id]
            while stack:
                task = stack[-1]
                waiting = [p for p in producers[task] if p not in depths]
                if waiting:
                    stack.extend(waiting)  # the batch has no cycles (check_batch)
                    continue
                depths[task] = 1 + max((depths[p] for p in producers[task]), default=-1)
                stack.pop()
        return depths

    def _queue_if_ready(self, task_id: str, now: float) -> None:
        """Queue a waiting task whose producers have all committed; a template (a task
        with an ``each`` input) is not queued but made into its members, and is done
        when they all are."""
        pending = self._db.execute("SELECT 1 FROM deps WHERE task = ? LIMIT 1", (task_id,))
        if pending.fetchone() is not None:
            return
        row = self._db.execute(
            "SELECT state, mapped, members FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
        if row["state"] != "waiting":
            return
        if not row["mapped"]:
            self._db.execute(
                "UPDATE tasks SET state = 'queued', queued_at = ? WHERE id = ?", (now, task_id)
            )
        elif row["members"] is None:
            self._expand(task_id, now)
        else:
            self._finish_template(task_id, now)

    def _expand(self, task_id: str, now: float) -> None:
        """Make a template's members (see :mod:`worker_hooks.task.mapping`), each a task
        the template depends on."""
        row = self._row(task_id)
        found = members(_spec_of(row), _submitted_spec(row))
        ids = [qualified_id(row["workflow"], member.spec.id) for member in found]
        taken = list(rows_in(self._db, "SELECT id FROM tasks WHERE id IN ({marks})", ids))
        if taken:
            reason = f"task id {task_of(taken[0]['id'])} is taken: rename it"
            self._fail_chain(task_id, reason, now)
            return
        for member, member_key in zip(found, ids, strict=True):
            self._insert(row["workflow"], member.spec, row["depth"], now, member_of=task_id)
            # A member made anew after an earlier one of its id carries on its attempt
            # numbers, so a late report from the earlier one stays stale (fencing).
            self._db.execute(
                "UPDATE tasks SET attempt = (SELECT COALESCE(MAX(attempt), 0) FROM assignments"
                " WHERE task = ?1) WHERE id = ?1",
                (member_key,),
            )
            self._queue_if_ready(member_key, now)
        for table in ("deps", "edges"):
            self._db.executemany(
                f"INSERT INTO {table} (task, producer) VALUES (?, ?)", [(task_id, i) for i in ids]
            )
        self._db.execute("UPDATE tasks SET members = ? WHERE id = ?", (len(ids), task_id))
        self._queue_if_ready(task_id, now)

    def _finish_template(self, task_id: str, now: float) -> None:
        """Every member is done: so is the template, its result recording theirs."""
        rows = self._db.execute(
            "SELECT body, result FROM tasks WHERE member_of = ? ORDER BY seq", (task_id,)
        ).fetchall()
        done = [(_spec_of(r).env[ITEM_VARIABLE], result_of(r["result"])) for r in rows]
        result = group_result(task_id, done)
        self._db.execute(
            "UPDATE tasks SET state = 'done', result = ?, finished_at = ?, error = NULL"
            " WHERE id = ?",
            (result.to_bytes().decode(), now, task_id),
        )
        self._release(task_id, result, now)

    def _drop_members(self, task_id: str, now: float) -> None:
        """Forget a template's members: it is made into members anew."""
        rows = self._db.execute(
            "SELECT id, state, attempt FROM tasks WHERE member_of = ?", (task_id,)
        ).fetchall()
        for row in rows:
            if row["state"] == "leased":  # its running attempt will be refused when it reports
                self._end_attempt(row["id"], row["attempt"], "withdrawn", None, (), now)
            if row["state"] == "done":
                self.catalog.forget_outputs(row["id"])
        for table in ("deps", "edges"):
            self._db.execute(
                f"DELETE FROM {table} WHERE task = ? AND producer IN"
                " (SELECT id FROM tasks WHERE member_of = ?)",
                (task_id, task_id),
            )
        self._db.execute("DELETE FROM tasks WHERE member_of = ?", (task_id,))
        self._db.execute("UPDATE tasks SET members = NULL WHERE id = ?", (task_id,))

    def _release(self, task_id: str, result: ResultManifest, now: float) -> None:
        """``task_id`` committed ``result``: its dependants stop waiting for it."""
        dependants = self._db.execute("SELECT task FROM deps WHERE producer = ?", (task_id,))
        for row in dependants.fetchall():
            self._satisfy(row["task"], task_id, result, now)

    def _satisfy(self, task_id: str, producer: str, result: ResultManifest, now: float) -> None:
        try:
            spec = _spec_of(self._row(task_id)).resolved(task_of(producer), result)
        except StagerError as exc:
            self._fail_chain(task_id, exc.message, now)
            return
        self._db.execute(
            "UPDATE tasks SET body = ?, inputs = ? WHERE id = ?", (*_spec_columns(spec), task_id)
        )
        self._db.execute("DELETE FROM deps WHERE task = ? AND producer = ?", (task_id, producer))
        self._queue_if_ready(task_id, now)

    def _fail_chain(self, task_id: str, reason: str, now: float) -> None:
        """Fail ``task_id`` (unless final) and, transitively, everything waiting on it."""
        todo = [(task_id, reason)]
        while todo:
            current, why = todo.pop()
            cursor = self._db.execute(
                "UPDATE tasks SET state = 'failed', error = ?, finished_at = ?, worker = NULL"
                " WHERE id = ? AND state NOT IN ('done', 'failed', 'cancelled')",
                (why, now, current),
            )
            if cursor.rowcount == 0 and current != task_id:
                continue
            dependants = self._db.execute("SELECT task FROM deps WHERE producer = ?", (current,))
            todo.extend(
                (row["task"], f"producer {task_of(current)} failed: {why}")
                for row in dependants.fetchall()
            )

    # -- leasing ------------------------------------------------------------------

    def report_cache(
        self,
        worker: str,
        *,
        added: Sequence[Digest],
        removed: Sequence[Digest],
        full: bool = False,
    ) -> None:
        """Record what ``worker``'s cache gained and lost (or, with ``full``, all it holds)."""
        with self._tx():
            self.catalog.report_cache(worker, added=added, removed=removed, full=full)

    def suspect(self, addresses: Sequence[str]) -> None:
        """Peers that failed a worker: offered to no one for ``worker_timeout_s``."""
        with self._tx():
            self.catalog.suspect(addresses)

    def touch_worker(
        self, worker: str, *, cache_bytes: int | None = None, address: str | None = None
    ) -> None:
        with self._tx():
            self.catalog.touch_worker(worker, cache_bytes=cache_bytes, address=address)

    def _learned(self, urls: set[str]) -> dict[str, Digest]:
        """The digests completions recorded for these objects (a hint for scheduling:
        an object may have changed since; staging checks what it fetches)."""
        rows = rows_in(
            self._db, "SELECT url, digest FROM learned WHERE url IN ({marks})", sorted(urls)
        )
        return {row["url"]: Digest.parse(row["digest"]) for row in rows}

    def _candidates(self, limit: int) -> list[Candidate]:
        """The first ``limit`` queued tasks (deepest first, then oldest), with the digests
        of their inputs where known."""
        rows = self._db.execute(
            "SELECT id, seq, queued_at, inputs, depth FROM tasks WHERE state = 'queued'"
            " ORDER BY depth DESC, seq LIMIT ?",
            (limit,),
        ).fetchall()
        inputs = {r["id"]: json.loads(r["inputs"]) for r in rows}
        learned = self._learned({i[2] for ins in inputs.values() for i in ins if i[0] is None})
        return [
            Candidate(
                r["id"],
                r["seq"],
                r["queued_at"] or 0.0,
                tuple(
                    (Digest.parse(i[0]) if i[0] else learned[i[2]], i[1])
                    for i in inputs[r["id"]]
                    if i[0] or i[2] in learned
                ),
                r["depth"],
            )
            for r in rows
        ]

    def lease(self, worker: str, count: int, *, address: str | None = None) -> list[Lease]:
        """Lease up to ``count`` queued tasks to ``worker``, chosen by the policy.

        Each lease names the other nodes that hold the task's inputs and the
        peers its ``mirror`` outputs may go to (when workers run file services).
        A task that reads an output only nodes hold, none of which ``worker``
        can reach now (all suspect, silent or lost), stays queued: it waits for
        a holder to answer again or for recovery to make the output anew.
        """
        now = self._clock()
        with self._tx() as db:
            self.catalog.touch_worker(worker, address=address)
            window = self.limits.candidate_window
            candidates = self._candidates(count if self.limits.policy is Policy.FIFO else window)
            blocked = self.catalog.unreachable(candidates, worker)
            if blocked and self.limits.policy is Policy.FIFO and len(candidates) < window:
                candidates = self._candidates(window)  # look past the ones that must wait
                blocked = self.catalog.unreachable(candidates, worker)
            candidates = [c for c in candidates if c.task_id not in blocked]
            holders = self.catalog.holders({d for c in candidates for d, _ in c.inputs})
            chosen = choose_tasks(
                candidates,
                worker=worker,
                holders=holders,
                policy=self.limits.policy,
                count=count,
                now=now,
                starvation_s=self.limits.starvation_s,
            )
            leases = []
            expires = now + self.limits.lease_s
            for task_id in chosen:
                row = db.execute(
                    "UPDATE tasks SET state = 'leased', attempt = attempt + 1, worker = ?,"
                    " lease_expires = ? WHERE id = ? RETURNING attempt, body, member_of",
                    (worker, expires, task_id),
                ).fetchone()
                db.execute(
                    "INSERT INTO assignments (task, attempt, worker, at) VALUES (?, ?, ?, ?)",
                    (task_id, row["attempt"], worker, now),
                )
                spec = _spec_of(row)
                key = key_of_spec(spec)
                memo = self._memo([key]).get(key) if key is not None else None
                leases.append(
                    Lease(
                        task_id,
                        row["attempt"],
                        spec,
                        expires,
                        memo_key=key,
                        memo=memo,
                        outputs_read=self._outputs_read(task_id, row["member_of"]),
                    )
                )
            return self.catalog.with_peers(leases, worker)

    def _outputs_read(self, task_id: str, template: str | None) -> bool:
        """Whether a known task reads ``task_id``'s outputs: one that names it as its
        producer (its template aside: that only gathers), or one that reads its template's."""
        row = self._db.execute(
            "SELECT EXISTS (SELECT 1 FROM edges WHERE producer = ?1 AND task IS NOT ?2)"
            " OR EXISTS (SELECT 1 FROM edges WHERE producer = ?2)",
            (task_id, template),
        ).fetchone()
        return bool(row[0])

    # -- the memo: results by task key --------------------------------------------------

    def _memo(self, keys: Sequence[str]) -> dict[str, ResultManifest]:
        rows = rows_in(self._db, "SELECT key, result FROM memo WHERE key IN ({marks})", keys)
        return {row["key"]: result_of(row["result"]) for row in rows}

    def has_results(self) -> bool:
        """Whether any result is recorded (a database that has run anything)."""
        return self._db.execute("SELECT 1 FROM memo LIMIT 1").fetchone() is not None

    def recorded(self, keys: Sequence[str]) -> list[ResultManifest]:
        """The results recorded for these task keys (those known)."""
        return list(self._memo(sorted(set(keys))).values())

    def remember(self, results: Sequence[ResultManifest]) -> None:
        """Record results made elsewhere (read back from S3): they answer memo lookups."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO memo (key, result) VALUES (?, ?)",
                [(r.task_key, r.to_bytes().decode()) for r in results],
            )

    def _current(self, task_id: str, attempt: int, worker: str | None = None) -> sqlite3.Row:
        """The task row if ``attempt`` is its live lease; else StaleAttemptError."""
        row = self._row(task_id)
        if row["state"] != "leased" or row["attempt"] != attempt:
            raise StaleAttemptError(
                f"task {task_id} attempt {attempt} is not the current lease "
                f"(state {row['state']}, attempt {row['attempt']})"
            )
        if worker is not None and row["worker"] != worker:
            raise StaleAttemptError(f"task {task_id} is leased to another worker")
        return row

    def heartbeat(
        self,
        worker: str,
        held: Sequence[tuple[str, int]],
        *,
        cache_bytes: int | None = None,
        written: Sequence[Written] = (),
    ) -> HeartbeatReply:
        """Extend the leases ``worker`` still holds; name the ones it must drop.

        ``written``: outputs the worker's node wrote behind (now in S3). A
        worker that had been found lost is asked for a full cache report.
        """
        with self._tx():
            was_lost = self.catalog.touch_worker(worker, cache_bytes=cache_bytes, revive=True)
            self.catalog.mark_written(written)
            stale = self._extend(worker, held)
        return HeartbeatReply(tuple(stale), report_all=was_lost)

    def extend(self, worker: str, held: Sequence[tuple[str, int]]) -> tuple[list[str], bool]:
        """A heartbeat's lease extension alone (sent with a lease request or completions):
        the tasks ``worker`` must drop, and whether it was taken as lost (only a
        heartbeat, which carries its whole cache, takes it back)."""
        with self._tx():
            lost = self.catalog.touch_worker(worker, revive=False)
            return self._extend(worker, held), lost

    def _extend(self, worker: str, held: Sequence[tuple[str, int]]) -> list[str]:
        expires = self._clock() + self.limits.lease_s
        stale = []
        for task_id, attempt in held:
            cursor = self._db.execute(
                "UPDATE tasks SET lease_expires = ? WHERE id = ? AND attempt = ?"
                " AND state = 'leased' AND worker = ?",
                (expires, task_id, attempt, worker),
            )
            if cursor.rowcount == 0:
                stale.append(task_id)
        return stale

    # -- ending an attempt --------------------------------------------------------

    def complete(
        self,
        task_id: str,
        attempt: int,
        worker: str,
        result: ResultManifest,
        uses: Sequence[InputUse] = (),
        *,
        memoized: bool = False,
    ) -> None:
        """Accept the result of the current attempt; release the dependants."""
        with self._tx():
            completion = Completion(
                task_id, attempt, result, tuple(uses), memoized, cached_outputs=not memoized
            )
            self._accept(completion, worker, self._clock())

    def complete_many(self, worker: str, completions: Sequence[Completion]) -> list[str]:
        """Accept each completion of a current attempt, in one transaction; return the
        ids of the others (refused each on its own: fencing is per task, as for
        :meth:`complete`)."""
        now = self._clock()
        refused = []
        with self._tx():
            for c in completions:
                try:
                    self._accept(c, worker, now)
                except (PreconditionFailedError, NotFoundError):
                    refused.append(c.task_id)
        return refused

    def _accept(self, completion: Completion, worker: str, now: float) -> None:
        """:meth:`complete`'s work, inside the caller's transaction. The fencing check
        comes before any write, so a refused completion changes nothing."""
        db = self._db
        task_id, attempt, result, uses = (
            completion.task_id,
            completion.attempt,
            completion.result,
            completion.uses,
        )
        result_json = result.to_bytes().decode()
        self._current(task_id, attempt, worker)
        db.execute(
            "UPDATE tasks SET state = 'done', result = ?, finished_at = ?, error = NULL,"
            " lease_expires = NULL, bytes_from_s3 = ?, bytes_from_cache = ?,"
            " bytes_from_peers = ?, memoized = ? WHERE id = ?",
            (
                result_json,
                now,
                sum(u.size for u in uses if not u.from_cache),
                sum(u.size for u in uses if u.from_cache),
                sum(u.size for u in uses if u.from_peer),
                completion.memoized,
                task_id,
            ),
        )
        self._end_attempt(task_id, attempt, "done", None, [r.url for r in result.logs], now)
        db.execute(
            "INSERT OR REPLACE INTO memo (key, result) VALUES (?, ?)",
            (result.task_key, result_json),
        )
        # What each input turned out to hold: tasks that name the same object
        # without a digest are scheduled by it from now on.
        db.executemany(
            "INSERT OR REPLACE INTO learned (url, digest) VALUES (?, ?)",
            [(str(r.url), str(r.digest)) for r in result.inputs],
        )
        workflow = db.execute("SELECT workflow FROM tasks WHERE id = ?", (task_id,)).fetchone()
        self.catalog.record_outputs(task_id, workflow[0], result)
        db.executemany(
            "INSERT OR IGNORE INTO replicas (worker, digest) VALUES (?, ?)",
            [(worker, str(digest)) for digest in completion.held()],
        )
        self._release(task_id, result, now)

    def fail(
        self,
        task_id: str,
        attempt: int,
        worker: str,
        error: str,
        *,
        retry: bool,
        logs: Sequence[S3Url] = (),
    ) -> TaskState:
        """End the current attempt as failed; retry it within the limit. Returns the new state.
        ``logs``: where the attempt's command left its stdout and stderr."""
        now = self._clock()
        with self._tx():
            row = self._current(task_id, attempt, worker)
            return self._after_failure(row, error, retry, now, logs=logs)

    def _end_attempt(
        self,
        task_id: str,
        attempt: int,
        outcome: str,
        error: str | None,
        logs: Sequence[S3Url],
        now: float,
    ) -> None:
        self._db.execute(
            "UPDATE assignments SET ended_at = ?, outcome = ?, error = ?, logs = ?"
            " WHERE task = ? AND attempt = ? AND ended_at IS NULL",
            (now, outcome, error, json.dumps([str(url) for url in logs]), task_id, attempt),
        )

    def _after_failure(
        self,
        row: sqlite3.Row,
        error: str,
        retry: bool,
        now: float,
        *,
        outcome: str = "failed",
        logs: Sequence[S3Url] = (),
    ) -> TaskState:
        self._end_attempt(row["id"], row["attempt"], outcome, error, logs, now)
        failures = row["failures"] + 1
        if retry and failures < self.limits.max_failures:
            self._db.execute(
                "UPDATE tasks SET state = 'queued', failures = ?, error = ?, worker = NULL,"
                " lease_expires = NULL, queued_at = ? WHERE id = ?",
                (failures, error, now, row["id"]),
            )
            return TaskState.QUEUED
        self._db.execute("UPDATE tasks SET failures = ? WHERE id = ?", (failures, row["id"]))
        if retry:
            error = f"{error} (after {failures} attempts)"
        self._fail_chain(row["id"], error, now)
        return TaskState.FAILED

    def release(self, task_id: str, attempt: int, worker: str) -> None:
        """Hand back a task the worker has not finished (a drain); it is not a failure."""
        now = self._clock()
        with self._tx() as db:
            self._current(task_id, attempt, worker)
            db.execute(
                "UPDATE tasks SET state = 'queued', worker = NULL, lease_expires = NULL,"
                " queued_at = ? WHERE id = ?",
                (now, task_id),
            )
            self._end_attempt(task_id, attempt, "handed back", None, (), now)

    def resume(self) -> None:
        """Serving again after a stop: the time the dispatcher was down counts against no
        worker. Leases and signs of life are renewed to now, so workers that kept running
        have a whole lease to report in before they are taken as lost or re-queued."""
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "UPDATE tasks SET lease_expires = MAX(lease_expires, ?) WHERE state = 'leased'",
                (now + self.limits.lease_s,),
            )
            self.catalog.grace(now)

    def expire(self) -> int:
        """Re-queue (or fail, past the limit) every lease whose time ran out."""
        now = self._clock()
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM tasks WHERE state = 'leased' AND lease_expires < ?", (now,)
            ).fetchall()
            for row in rows:
                error = f"lease of attempt {row['attempt']} expired on {row['worker']}"
                self._after_failure(row, error, True, now, outcome="expired")
        return len(rows)

    # -- lost nodes -------------------------------------------------------------------

    def find_lost(self) -> list[RecoveryReport]:
        """Recover from every worker silent for longer than a lease (its leases have run out)."""
        silent = self.catalog.silent_workers(self.limits.lease_s)
        return [self.recover(worker) for worker in silent]

    def recover(self, worker: str, *, dry_run: bool = False) -> RecoveryReport:
        """Take ``worker`` as lost with its cache; see :mod:`~worker_hooks.dispatch.recovery`.

        Its leases are re-queued (new attempts; its own are stale from now on),
        outputs only it held are recomputed where still needed. ``dry_run``
        plans the same in a transaction that is then rolled back.
        """
        now = self._clock()
        with self._tx(dry_run=dry_run):
            if self._db.execute("SELECT 1 FROM workers WHERE id = ?", (worker,)).fetchone() is None:
                raise NotFoundError(f"no worker {worker!r} has contacted this dispatcher")
            at_risk = self.catalog.at_risk(worker)
            self.catalog.mark_lost(worker)
            leased = self._db.execute(
                "SELECT * FROM tasks WHERE state = 'leased' AND worker = ?", (worker,)
            ).fetchall()
            for row in leased:
                self._after_failure(row, f"worker {worker} was lost", True, now, outcome="lost")
            plan = plan_recovery(at_risk, _View(self._db, self.catalog))
            for task_id in plan.rerun:
                self._restart(task_id, set(plan.rerun), rerun=True, now=now)
            for task_id in plan.reset:
                self._restart(task_id, set(plan.rerun), rerun=False, now=now)
        return RecoveryReport(
            worker=worker,
            dry_run=dry_run,
            outputs_safe=len(plan.safe),
            outputs_from_mirror=len(plan.from_mirror),
            outputs_dropped=len(plan.dropped),
            recomputed=plan.rerun,
            reset=plan.reset,
            requeued=tuple(row["id"] for row in leased),
        )

    def _restart(self, task_id: str, waiting_for: set[str], *, rerun: bool, now: float) -> None:
        """Send a task back to wait for the producers in ``waiting_for`` (it runs again,
        if it ran). Its spec is resolved afresh from the one submitted, with the results
        of its other producers."""
        row = self._row(task_id)
        if row["state"] == "leased":  # its running attempt will be refused when it reports
            self._end_attempt(task_id, row["attempt"], "withdrawn", None, (), now)
        if row["members"] is not None and not self._members_of(task_id) & waiting_for:
            self._drop_members(task_id, now)  # not one of its members runs again: all do
        spec = _submitted_spec(row)
        edges = self._db.execute("SELECT producer FROM edges WHERE task = ?", (task_id,))
        self._db.execute("DELETE FROM deps WHERE task = ?", (task_id,))
        ended = None  # a producer that failed (or was cancelled) and does not run again
        for producer in [edge["producer"] for edge in edges.fetchall()]:
            produced = self._row(producer)
            if producer not in waiting_for and produced["state"] in ("failed", "cancelled"):
                ended = f"producer {task_of(producer)} {produced['state']}"
            if producer in waiting_for or produced["state"] != "done":
                self._db.execute(
                    "INSERT INTO deps (task, producer) VALUES (?, ?)", (task_id, producer)
                )
            else:
                spec = spec.resolved(task_of(producer), result_of(produced["result"]))
        self._db.execute(
            "UPDATE tasks SET state = 'waiting', body = ?, inputs = ?, result = NULL,"
            " worker = NULL, lease_expires = NULL, finished_at = NULL, error = NULL,"
            " failures = 0, reruns = reruns + ? WHERE id = ?",
            (*_spec_columns(spec), int(rerun), task_id),
        )
        if row["state"] == "done":
            self.catalog.forget_outputs(task_id)
        if ended is not None:  # it would wait for ever: it fails again, with the reason
            self._fail_chain(task_id, ended, now)
            return
        self._queue_if_ready(task_id, now)

    def _members_of(self, task_id: str) -> set[str]:
        rows = self._db.execute("SELECT id FROM tasks WHERE member_of = ?", (task_id,))
        return {row["id"] for row in rows}

    def cancel(self, task_id: str) -> TaskState:
        """Cancel a task that has not finished (its dependants fail)."""
        now = self._clock()
        with self._tx() as db:
            task_id = self._find(task_id)
            row = self._row(task_id)
            if row["state"] in FINAL_STATES:
                return TaskState(row["state"])
            db.execute(
                "UPDATE tasks SET state = 'cancelled', finished_at = ?1, worker = NULL,"
                " error = 'cancelled' WHERE (id = ?2 OR member_of = ?2) AND state NOT IN"
                " ('done', 'failed', 'cancelled')",
                (now, task_id),
            )
            dependants = db.execute("SELECT task FROM deps WHERE producer = ?", (task_id,))
            for dependant in dependants.fetchall():
                reason = f"producer {task_of(task_id)} was cancelled"
                self._fail_chain(dependant["task"], reason, now)
        return TaskState.CANCELLED
