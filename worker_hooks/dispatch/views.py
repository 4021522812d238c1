"""What the task database answers without changing it: tasks, workflows, status.

:class:`TaskViews` reads the tables :class:`~worker_hooks.dispatch.taskdb.TaskDB`
writes (the task database is a ``TaskViews`` that also changes them). What
it returns is typed: protocol messages, never a row.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from stager.errors import NotFoundError, PreconditionFailedError
from stager.locations import S3Url
from worker_hooks.dispatch.catalog import ReplicaCatalog
from worker_hooks.dispatch.scheduling import Policy
from worker_hooks.task.protocol import (
    BRIEF_LIMIT,
    Assignment,
    AttemptInfo,
    StatusReply,
    TaskBrief,
    TaskInfo,
    TaskState,
    TaskTimeline,
    WorkerInfo,
    WorkflowReport,
)
from worker_hooks.task.result import ResultManifest
from worker_hooks.task.spec import task_of, valid_task_id


def _attempt(row: sqlite3.Row) -> AttemptInfo:
    return AttemptInfo(
        attempt=row["attempt"],
        worker=row["worker"],
        started_at=row["at"],
        ended_at=row["ended_at"],
        outcome=row["outcome"],
        error=row["error"],
        logs=tuple(S3Url.parse(url) for url in json.loads(row["logs"])),
    )


def result_of(text: str) -> ResultManifest:
    return ResultManifest.from_bytes(text.encode())


class TaskViews:
    def __init__(
        self,
        db: sqlite3.Connection,
        catalog: ReplicaCatalog,
        *,
        clock: Callable[[], float],
        worker_timeout_s: float,
        policy: Policy,
    ) -> None:
        self._db = db
        self.catalog = catalog
        self._clock = clock
        self._worker_timeout_s = worker_timeout_s
        self._policy = policy

    def _row(self, task_id: str) -> sqlite3.Row:
        row = self._db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no task {task_id!r}", hint="check the task id")
        return row  # type: ignore[no-any-return]

    def _find(self, name: str) -> str:
        """The task ``name`` names: ``<workflow>/<id>``, or an id only one workflow has."""
        if "/" in name or not valid_task_id(name):
            return name
        rows = self._db.execute(
            "SELECT id, workflow FROM tasks WHERE id = workflow || '/' || ? LIMIT 3", (name,)
        ).fetchall()
        if len(rows) > 1:
            workflows = ", ".join(sorted(row["workflow"] for row in rows))
            raise PreconditionFailedError(
                f"task {name} is in more than one workflow ({workflows})",
                hint=f"name it as WORKFLOW/{name}",
            )
        return str(rows[0]["id"]) if rows else name

    def task(self, task_id: str) -> TaskInfo:
        """The task named ``task_id`` (see :meth:`_find`)."""
        row = self._row(self._find(task_id))
        return TaskInfo(
            id=task_of(row["id"]),
            workflow=row["workflow"],
            state=TaskState(row["state"]),
            attempt=row["attempt"],
            failures=row["failures"],
            worker=row["worker"],
            error=row["error"],
            result=result_of(row["result"]) if row["result"] else None,
            reruns=row["reruns"],
            memoized=bool(row["memoized"]),
            attempts=tuple(
                _attempt(a)
                for a in self._db.execute(
                    "SELECT * FROM assignments WHERE task = ? ORDER BY attempt", (row["id"],)
                )
            ),
        )

    def report(self, workflow: str) -> WorkflowReport:
        """Every task of ``workflow`` with its attempts, for a run report."""
        tasks = self._db.execute(
            "SELECT id, state, bytes_from_s3, bytes_from_cache, bytes_from_peers, memoized,"
            " error, result FROM tasks WHERE workflow = ? ORDER BY seq",
            (workflow,),
        ).fetchall()
        if not tasks:
            raise NotFoundError(f"no workflow {workflow!r}", hint="see `stager status`")
        attempts: dict[str, list[AttemptInfo]] = {}
        for a in self._db.execute(
            "SELECT a.* FROM assignments a JOIN tasks t ON t.id = a.task"
            " WHERE t.workflow = ? ORDER BY a.at",
            (workflow,),
        ):
            attempts.setdefault(a["task"], []).append(_attempt(a))
        return WorkflowReport(
            workflow,
            tuple(
                TaskTimeline(
                    task_of(t["id"]),
                    TaskState(t["state"]),
                    t["bytes_from_s3"],
                    t["bytes_from_cache"],
                    t["bytes_from_peers"],
                    bool(t["memoized"]),
                    tuple(attempts.get(t["id"], ())),
                    t["error"],
                    dict(result_of(t["result"]).timings_s) if t["result"] else {},
                )
                for t in tasks
            ),
        )

    def assignments(self, task_id: str | None = None) -> list[Assignment]:
        query = "SELECT task, attempt, worker FROM assignments"
        rows = self._db.execute(
            query + (" WHERE task = ? ORDER BY at" if task_id else " ORDER BY at"),
            (self._find(task_id),) if task_id else (),
        )
        return [Assignment(r["task"], r["attempt"], r["worker"]) for r in rows]

    def counts(self, workflow: str | None = None) -> dict[str, int]:
        where, args = ("WHERE workflow = ?", (workflow,)) if workflow else ("", ())
        rows = self._db.execute(
            f"SELECT state, COUNT(*) AS n FROM tasks {where} GROUP BY state", args
        )
        counts = {state.value: 0 for state in TaskState}
        counts.update({row["state"]: row["n"] for row in rows})
        return counts

    def status(self, workflow: str | None = None) -> StatusReply:
        now = self._clock()
        where, args = ("WHERE workflow = ?", (workflow,)) if workflow else ("", ())
        totals = self._db.execute(
            "SELECT SUM(bytes_from_s3) AS s3, SUM(bytes_from_cache) AS cache,"
            " SUM(bytes_from_peers) AS peers,"
            " MIN(submitted_at) AS first, MAX(finished_at) AS last,"
            " SUM(state = 'done' AND finished_at >= ?) AS recent, SUM(memoized) AS memo"
            f" FROM tasks {where}",
            (now - 60, *args),
        ).fetchone()
        workers = tuple(
            WorkerInfo(
                id=w["id"],
                alive=now - w["last_seen"] <= self._worker_timeout_s,
                last_seen_s_ago=round(now - w["last_seen"], 1),
                running=w["running"],
                cache_bytes=w["cache_bytes"],
                cached_digests=w["cached"],
                address=w["address"],
                lost=w["lost_at"] is not None,
            )
            for w in self._db.execute(
                "SELECT w.*, COALESCE(l.n, 0) AS running, (SELECT COUNT(*) FROM replicas r"
                " WHERE r.worker = w.id) AS cached FROM workers w LEFT JOIN"
                " (SELECT worker, COUNT(*) AS n FROM tasks WHERE state = 'leased'"
                " GROUP BY worker) l ON l.worker = w.id ORDER BY w.id"
            )
        )
        from_s3, from_cache = totals["s3"] or 0, totals["cache"] or 0
        counts = self.counts(workflow)
        span = (totals["last"] or now) - (totals["first"] or now)
        return StatusReply(
            policy=self._policy.value,
            counts=counts,
            workers=workers,
            bytes_from_s3=from_s3,
            bytes_from_cache=from_cache,
            cache_hit_rate=from_cache / (from_s3 + from_cache) if from_s3 + from_cache else None,
            tasks_per_s_last_minute=(totals["recent"] or 0) / 60,
            tasks_per_s_overall=counts["done"] / span if span > 0 else None,
            node_only=self.catalog.node_only(workflow),
            bytes_from_peers=totals["peers"] or 0,
            bytes_written_behind=self.catalog.written_behind(workflow),
            memo_hits=totals["memo"] or 0,
            span_s=round(span, 3) if totals["last"] else None,
            running=self._running(workflow, now) if workflow else (),
            failed=self._failed(workflow, now) if workflow else (),
        )

    def _running(self, workflow: str, now: float) -> tuple[TaskBrief, ...]:
        rows = self._db.execute(
            "SELECT t.id, t.attempt, t.worker, a.at FROM tasks t JOIN assignments a"
            " ON a.task = t.id AND a.attempt = t.attempt"
            " WHERE t.workflow = ? AND t.state = 'leased' ORDER BY a.at LIMIT ?",
            (workflow, BRIEF_LIMIT),
        )
        return tuple(
            TaskBrief(task_of(r["id"]), r["attempt"], r["worker"], round(now - r["at"], 1))
            for r in rows
        )

    def _failed(self, workflow: str, now: float) -> tuple[TaskBrief, ...]:
        rows = self._db.execute(
            "SELECT id, attempt, finished_at, error FROM tasks"
            " WHERE workflow = ? AND state = 'failed' ORDER BY finished_at, seq LIMIT ?",
            (workflow, BRIEF_LIMIT),
        )
        return tuple(
            TaskBrief(
                task_of(r["id"]),
                r["attempt"],
                None,
                round(now - (r["finished_at"] or now), 1),
                r["error"],
            )
            for r in rows
        )
