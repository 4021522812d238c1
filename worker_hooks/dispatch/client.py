"""The dispatcher's client, for workers, ``stager submit`` and ``stager status``.

Thread-safe: each thread sends over its own kept-alive connection
(:mod:`stager.http1`); one found closed by the server while idle is
replaced before a request goes out, so no request is sent twice. Transport
failures become
:class:`UnreachableError`, 401 :class:`AccessDeniedError`, 409 (a stale
attempt) :class:`PreconditionFailedError`, 404 :class:`NotFoundError`, 400
:class:`ConfigError`; the server's one-line reason is kept. The token goes
only into the Authorization header, never into a message.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from stager.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    PreconditionFailedError,
    StagerError,
    UnreachableError,
)
from stager.http1 import ThreadConnections
from stager.locations import S3Url
from stager.tokens import TOKEN_ENV, check_token
from worker_hooks.task.protocol import (
    PROTOCOL_VERSION,
    VERSION_HEADER,
    Assignment,
    AssignmentsReply,
    CacheReport,
    CompleteRequest,
    Completion,
    CompletionsReply,
    CompletionsRequest,
    ErrorReply,
    FailRequest,
    HeartbeatReply,
    HeartbeatRequest,
    Held,
    InputUse,
    LeaseReply,
    LeaseRequest,
    MemoReply,
    MemoRequest,
    Message,
    RecoverRequest,
    RecoveryReport,
    ReleaseRequest,
    RetryRequest,
    StateReply,
    StatusReply,
    SubmitReply,
    SubmitRequest,
    TaskInfo,
    TaskState,
    WorkflowReport,
    check_version,
)
from worker_hooks.task.result import ResultManifest
from worker_hooks.task.spec import TaskSpec
from worker_hooks.task.workflow import check_batch, submit_order

M = TypeVar("M", bound=Message)
SUBMIT_CHUNK_TASKS = 2_000  # tasks in one submit request at most
_BY_STATUS: dict[int, type[StagerError]] = {
    400: ConfigError,
    401: AccessDeniedError,
    404: NotFoundError,
    409: PreconditionFailedError,
}


class DispatcherClient:
    def __init__(
        self, url: str, token: str, *, ca_file: str | None = None, timeout_s: float = 30.0
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise ConfigError(f"dispatcher URL {url!r} is not http(s)://host:port")
        host = parts.netloc.rpartition("@")[2]  # a user or password in the URL is never sent
        self.url = urllib.parse.urlunsplit(parts._replace(netloc=host)).rstrip("/")
        secure = parts.scheme == "https"
        self._address = (parts.hostname, port or (443 if secure else 80))
        self._prefix = parts.path.rstrip("/")
        token = check_token(token, "the client's token", min_chars=1)  # a header: one clean line
        self._headers = {
            "Host": host,
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            VERSION_HEADER: str(PROTOCOL_VERSION),
        }
        self._timeout_s = timeout_s
        self._connections = ThreadConnections(
            tls=ssl.create_default_context(cafile=ca_file) if secure else None,
            connect_timeout_s=5.0,
            read_timeout_s=timeout_s,
        )

    def call(
        self,
        method: str,
        path: str,
        answer: type[M],
        body: Message | None = None,
        *,
        wait_s: float = 0,
    ) -> M:
        """Send ``body``; return the answer parsed as ``answer`` (errors raised as above)."""
        data = b"" if body is None else body.to_json()
        headers = {**self._headers, "Content-Length": str(len(data))}
        try:
            got = self._connections.exchange(
                self._address,
                method,
                self._prefix + path,
                headers,
                data,
                read_timeout_s=self._timeout_s + wait_s,
            )
        except OSError as exc:
            reason = exc.strerror or str(exc) or exc.__class__.__name__
            raise UnreachableError(
                f"the dispatcher at {self.url} is unreachable: {reason}",
                hint="check the URL and that `stager dispatcher serve` runs there",
            ) from exc
        if got.status >= 400:
            raise self._error(got.status, got.body)
        check_version(got.headers.get(VERSION_HEADER.lower()))
        return answer.from_json(got.body)

    def _error(self, status: int, data: bytes) -> StagerError:
        try:
            message = ErrorReply.from_json(data).error
        except StagerError:
            message = f"HTTP {status}"
        error = _BY_STATUS.get(status, StagerError)
        if status == 401:
            return error(
                f"the dispatcher refused the token: {message}",
                hint=f"use the token the dispatcher serves with (--token-file or {TOKEN_ENV})",
            )
        return error(f"dispatcher: {message}", hint="")

    # -- the API ----------------------------------------------------------------------

    def submit(
        self,
        tasks: Sequence[TaskSpec],
        workflow: str = "default",
        *,
        chunk_tasks: int = SUBMIT_CHUNK_TASKS,
        sent: Callable[[int], object] = lambda count: None,
    ) -> SubmitReply:
        """Add ``tasks`` to ``workflow`` (see :meth:`TaskDB.submit`).

        More than ``chunk_tasks`` go in several requests, producers before the
        tasks that read from them, each checked and stored by the dispatcher in
        a transaction of its own: neither side holds a large workflow in memory
        at once. When every producer is in ``tasks``, the whole batch is checked
        here first, so a mistake is found before anything is sent; otherwise a
        part the dispatcher refuses leaves the parts before it submitted (said
        in the error; submitting the fixed file again keeps them). ``sent`` is
        called with the count of tasks of each part sent.
        """
        if len(tasks) <= chunk_tasks:
            reply = self._submit(workflow, tasks)
            sent(len(tasks))
            return reply
        ordered = submit_order(tasks)
        ids = {spec.id for spec in tasks}
        if all(producer in ids for spec in tasks for producer in spec.producers):
            check_batch(ordered)
        parts = (
            ordered[first : first + chunk_tasks] for first in range(0, len(ordered), chunk_tasks)
        )
        return self.submit_parts(parts, workflow, sent=sent)

    def submit_parts(
        self,
        parts: Iterable[Sequence[TaskSpec]],
        workflow: str = "default",
        *,
        sent: Callable[[int], object] = lambda count: None,
    ) -> SubmitReply:
        """Add the tasks of ``parts`` to ``workflow``, one request per part, in order
        (each task after the tasks it reads from: :meth:`submit` says why)."""
        replies = []
        first = 0
        remaining = iter(parts)
        while True:
            try:  # reading a part may fail too (a file changed between its readings)
                if (part := next(remaining, None)) is None:
                    break
                replies.append(self._submit(workflow, part))
            except StagerError as exc:
                if not first:
                    raise
                said = f"{exc.message}; the {first} tasks sent before it were submitted"
                raise type(exc)(said, hint=exc.hint) from exc
            first += len(part)
            sent(len(part))
        again = {i for r in replies for i in r.again}  # a later part may restart a kept task
        return SubmitReply(
            submitted=tuple(i for r in replies for i in r.submitted),
            again=tuple(sorted(again)),
            kept=tuple(sorted({i for r in replies for i in r.kept} - again)),
        )

    def _submit(self, workflow: str, tasks: Sequence[TaskSpec]) -> SubmitReply:
        request = SubmitRequest(workflow, tuple(tasks))
        return self.call("POST", "/v1/tasks", SubmitReply, request)

    def lease(
        self,
        worker: str,
        max_tasks: int,
        *,
        wait_s: float,
        cache: CacheReport | None = None,
        address: str | None = None,
        held: Sequence[Held] = (),
    ) -> LeaseReply:
        """Leased tasks (maybe none after ``wait_s``) and the dispatcher's lease length;
        the leases ``held`` are extended (and those to drop named)."""
        request = LeaseRequest(worker, max_tasks, wait_s, cache, address, tuple(held))
        return self.call("POST", "/v1/lease", LeaseReply, request, wait_s=wait_s)

    def heartbeat(self, request: HeartbeatRequest) -> HeartbeatReply:
        """Extend leases, report the cache; which tasks the worker must drop."""
        return self.call("POST", "/v1/heartbeat", HeartbeatReply, request)

    def complete(
        self,
        task_id: str,
        attempt: int,
        worker: str,
        result: ResultManifest,
        uses: Sequence[InputUse],
        *,
        memoized: bool = False,
    ) -> None:
        request = CompleteRequest(worker, attempt, result, tuple(uses), memoized)
        self.call("POST", f"/v1/tasks/{_quoted(task_id)}/complete", StateReply, request)

    def complete_many(
        self,
        worker: str,
        completions: Sequence[Completion],
        *,
        held: Sequence[Held] = (),
        want: int = 0,
    ) -> CompletionsReply:
        """Report many completions in one request: ``stale`` names those refused (each
        for its own attempt; the others are accepted). The leases ``held`` are
        extended (and those to drop named). Up to ``want`` new tasks come back
        leased in ``leases``, without waiting for any."""
        request = CompletionsRequest(worker, tuple(completions), tuple(held), want)
        return self.call("POST", "/v1/completions", CompletionsReply, request)

    def recorded(self, keys: Sequence[str]) -> dict[str, ResultManifest]:
        """The results the dispatcher holds for these task keys, by key."""
        if not keys:
            return {}
        reply = self.call("POST", "/v1/memo", MemoReply, MemoRequest(tuple(keys)))
        return {r.task_key: r for r in reply.results}

    def fail(
        self,
        task_id: str,
        attempt: int,
        worker: str,
        error: str,
        *,
        retry: bool,
        bad_peers: Sequence[str] = (),
        logs: Sequence[S3Url] = (),
    ) -> TaskState:
        request = FailRequest(worker, attempt, error, retry, tuple(bad_peers), tuple(logs))
        return self.call("POST", f"/v1/tasks/{_quoted(task_id)}/fail", StateReply, request).state

    def recover(self, worker: str, *, dry_run: bool = False) -> RecoveryReport:
        """Take ``worker`` as lost and recover what it held (see docs/failures.md)."""
        path = f"/v1/workers/{_quoted(worker)}/recover"
        return self.call("POST", path, RecoveryReport, RecoverRequest(dry_run))

    def retry(self, workflow: str, request: RetryRequest) -> SubmitReply:
        """Run the workflow's failed tasks again (see :meth:`TaskDB.retry`)."""
        return self.call("POST", f"/v1/workflows/{_quoted(workflow)}/retry", SubmitReply, request)

    def report(self, workflow: str) -> WorkflowReport:
        """Every task of the workflow with its attempts (for ``stager report``)."""
        return self.call("GET", f"/v1/workflows/{_quoted(workflow)}/report", WorkflowReport)

    def release(self, task_id: str, attempt: int, worker: str) -> None:
        request = ReleaseRequest(worker, attempt)
        self.call("POST", f"/v1/tasks/{_quoted(task_id)}/release", StateReply, request)

    def cancel(self, task_id: str) -> TaskState:
        return self.call("POST", f"/v1/tasks/{_quoted(task_id)}/cancel", StateReply).state

    def task(self, task_id: str) -> TaskInfo:
        return self.call("GET", f"/v1/tasks/{_quoted(task_id)}", TaskInfo)

    def status(self, workflow: str | None = None) -> StatusReply:
        query = "?" + urllib.parse.urlencode({"workflow": workflow}) if workflow else ""
        return self.call("GET", f"/v1/status{query}", StatusReply)

    def assignments(self, task_id: str | None = None) -> list[Assignment]:
        query = "?" + urllib.parse.urlencode({"task": task_id}) if task_id else ""
        return list(self.call("GET", f"/v1/assignments{query}", AssignmentsReply).assignments)


def _quoted(task_id: str) -> str:
    return urllib.parse.quote(task_id, safe="")
