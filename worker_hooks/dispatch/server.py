"""``stager dispatcher serve``: the task queue as an HTTP/JSON service (aiohttp).

Workers only ever connect out to it (they pull), so nodes behind NAT work.
Every request must carry ``Authorization: Bearer <token>``, compared in
constant time; without it the answer is 401 and nothing is read. The token
is never logged (there is no access log). The API is in docs/dispatcher.md.

Every request and answer is a typed message of
:mod:`worker_hooks.task.protocol`, parsed in the handler; a request of
another protocol version is refused with a 400 naming both versions.

One event loop owns the :class:`~worker_hooks.dispatch.taskdb.TaskDB`, so no
lock is needed. Its commits are grouped (:mod:`~worker_hooks.dispatch.transactions`):
the changes the requests of one turn of the loop make are committed together
at the end of that turn, and each request is answered only after the commit
that holds its change. A lease request with no work waits (long poll) on a
condition that every state change notifies. A background task expires
leases every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from aiohttp import web

from stager.errors import ConfigError, NotFoundError, PreconditionFailedError, StagerError
from stager.tokens import check_token
from worker_hooks.dispatch.taskdb import TaskDB
from worker_hooks.task.protocol import (
    PROTOCOL_VERSION,
    VERSION_HEADER,
    AssignmentsReply,
    CacheReport,
    CompleteRequest,
    CompletionsReply,
    CompletionsRequest,
    ErrorReply,
    FailRequest,
    HeartbeatRequest,
    Held,
    LeaseReply,
    LeaseRequest,
    MemoReply,
    MemoRequest,
    Message,
    RecoverRequest,
    ReleaseRequest,
    RetryRequest,
    StateReply,
    SubmitRequest,
    TaskState,
    check_version,
)

MAX_WAIT_S = 60.0
MAX_LEASES = 1000  # in one answer
MAX_MEMO_KEYS = 10_000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=Message)


def _status_of(exc: StagerError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, PreconditionFailedError):
        return 409
    if isinstance(exc, ConfigError):
        return 400
    return 500


class Dispatcher:
    def __init__(self, db: TaskDB, token: str, *, expire_every_s: float = 1.0) -> None:
        self.db = db
        self._token = ("Bearer " + check_token(token, "the dispatcher's token")).encode()
        self._expire_every_s = expire_every_s
        self._changed = asyncio.Condition()
        self._committed: asyncio.Future[None] | None = None  # the open group's commit

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._auth, self._errors, self._durable, self._version],
            client_max_size=64 << 20,
        )
        app.add_routes(
            [
                web.post("/v1/tasks", self.submit),
                web.get("/v1/tasks/{id}", self.get_task),
                web.post("/v1/tasks/{id}/complete", self.complete),
                web.post("/v1/completions", self.complete_many),
                web.post("/v1/memo", self.memo),
                web.post("/v1/tasks/{id}/fail", self.fail),
                web.post("/v1/tasks/{id}/release", self.release),
                web.post("/v1/tasks/{id}/cancel", self.cancel),
                web.post("/v1/lease", self.lease),
                web.post("/v1/heartbeat", self.heartbeat),
                web.get("/v1/status", self.status),
                web.get("/v1/assignments", self.assignments),
                web.post("/v1/workers/{id}/recover", self.recover),
                web.post("/v1/workflows/{name}/retry", self.retry),
                web.get("/v1/workflows/{name}/report", self.report),
            ]
        )
        app.cleanup_ctx.append(self._expiry_loop)
        return app

    # -- middleware -----------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Header bytes that are not UTF-8 arrive as surrogates: compared, never decoded.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, self._token):
            return web.json_response(
                {"error": "missing or wrong token"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except StagerError as exc:
            return _reply(ErrorReply(exc.one_line()), status=_status_of(exc))

    @web.middleware
    async def _durable(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer once what the request changed is committed (with its turn's others)."""
        response = await handler(request)
        if self._committed is not None:
            await asyncio.shield(self._committed)
        return response

    def _commit_soon(self) -> None:
        """A group of changes opened: commit it at the end of this turn of the loop (once:
        a group opened again before that commit is part of it)."""
        if self._committed is None:
            loop = asyncio.get_running_loop()
            self._committed = loop.create_future()
            loop.call_soon(self._commit)

    def _commit(self) -> None:
        committed, self._committed = self._committed, None
        assert committed is not None
        try:
            self.db.transactions.commit()
        except StagerError as exc:  # every request of the group answers with it
            committed.set_exception(exc)
            committed.add_done_callback(lambda done: done.exception())  # seen, if unawaited
            return
        committed.set_result(None)

    @web.middleware
    async def _version(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        check_version(request.headers.get(VERSION_HEADER))
        return await handler(request)

    async def _changed_now(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _expiry_loop(self, app: web.Application) -> AsyncIterator[None]:
        self.db.resume()
        self.db.transactions.group(self._commit_soon)

        async def expire_forever() -> None:
            while True:
                await asyncio.sleep(self._expire_every_s)
                expired, lost = self.db.expire(), self.db.find_lost()
                if expired or lost:
                    await self._changed_now()

        task = asyncio.create_task(expire_forever())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.db.transactions.group(None)  # commits what is open

    @staticmethod
    async def _read(request: web.Request, kind: type[M]) -> M:
        return kind.from_json(await request.read())

    # -- handlers -----------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        body = await self._read(request, SubmitRequest)
        reply = self.db.submit(body.workflow, body.tasks)
        await self._changed_now()
        return _reply(reply)

    async def get_task(self, request: web.Request) -> web.Response:
        return _reply(self.db.task(request.match_info["id"]))

    async def lease(self, request: web.Request) -> web.Response:
        body = await self._read(request, LeaseRequest)
        count = max(0, min(body.max_tasks, MAX_LEASES))
        wait_s = max(0.0, min(body.wait_s, MAX_WAIT_S))
        self._apply_cache_report(body.worker, body.cache)
        drop, lost = self._extend(body.worker, body.held)
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            leases = self.db.lease(body.worker, count, address=body.address) if count else []
            remaining = deadline - asyncio.get_running_loop().time()
            if leases or remaining <= 0:
                break
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
        return _reply(LeaseReply(tuple(leases), self.db.limits.lease_s, drop, lost))

    def _extend(self, worker: str, held: Sequence[Held]) -> tuple[tuple[str, ...], bool]:
        """The leases a busy worker sent with a request, extended (no heartbeat needed)."""
        if not held:
            return (), False
        drop, lost = self.db.extend(worker, [(h.task_id, h.attempt) for h in held])
        return tuple(drop), lost

    def _apply_cache_report(self, worker: str, report: CacheReport | None) -> None:
        if report is not None:
            self.db.report_cache(
                worker, added=report.added, removed=report.removed, full=report.full
            )

    async def heartbeat(self, request: web.Request) -> web.Response:
        body = await self._read(request, HeartbeatRequest)
        self._apply_cache_report(body.worker, body.cache)
        held = [(h.task_id, h.attempt) for h in body.held]
        self.db.suspect(body.bad_peers)
        reply = self.db.heartbeat(
            body.worker, held, cache_bytes=body.cache_bytes, written=body.written
        )
        return _reply(reply)

    async def complete(self, request: web.Request) -> web.Response:
        body = await self._read(request, CompleteRequest)
        self.db.complete(
            request.match_info["id"],
            body.attempt,
            body.worker,
            body.result,
            body.uses,
            memoized=body.memoized,
        )
        await self._changed_now()
        return _reply(StateReply(TaskState.DONE))

    async def complete_many(self, request: web.Request) -> web.Response:
        body = await self._read(request, CompletionsRequest)
        refused = self.db.complete_many(body.worker, body.completions)
        drop, lost = self._extend(body.worker, body.held)
        want = max(0, min(body.want, MAX_LEASES))
        leases = self.db.lease(body.worker, want) if want else []
        await self._changed_now()
        return _reply(CompletionsReply(tuple(refused), drop, lost, tuple(leases)))

    async def memo(self, request: web.Request) -> web.Response:
        body = await self._read(request, MemoRequest)
        if len(body.keys) > MAX_MEMO_KEYS:
            raise ConfigError(f"a memo request may name {MAX_MEMO_KEYS} keys at most")
        return _reply(MemoReply(tuple(self.db.recorded(body.keys))))

    async def fail(self, request: web.Request) -> web.Response:
        body = await self._read(request, FailRequest)
        self.db.suspect(body.bad_peers)
        state = self.db.fail(
            request.match_info["id"],
            body.attempt,
            body.worker,
            body.error,
            retry=body.retry,
            logs=body.logs,
        )
        await self._changed_now()
        return _reply(StateReply(state))

    async def release(self, request: web.Request) -> web.Response:
        body = await self._read(request, ReleaseRequest)
        self.db.release(request.match_info["id"], body.attempt, body.worker)
        await self._changed_now()
        return _reply(StateReply(TaskState.QUEUED))

    async def cancel(self, request: web.Request) -> web.Response:
        state = self.db.cancel(request.match_info["id"])
        await self._changed_now()
        return _reply(StateReply(state))

    async def status(self, request: web.Request) -> web.Response:
        return _reply(self.db.status(request.query.get("workflow")))

    async def recover(self, request: web.Request) -> web.Response:
        body = await self._read(request, RecoverRequest)
        report = self.db.recover(request.match_info["id"], dry_run=body.dry_run)
        if not body.dry_run:
            await self._changed_now()
        return _reply(report)

    async def retry(self, request: web.Request) -> web.Response:
        body = await self._read(request, RetryRequest)
        reply = self.db.retry(request.match_info["name"], body)
        await self._changed_now()
        return _reply(reply)

    async def report(self, request: web.Request) -> web.Response:
        return _reply(self.db.report(request.match_info["name"]))

    async def assignments(self, request: web.Request) -> web.Response:
        rows = self.db.assignments(request.query.get("task"))
        return _reply(AssignmentsReply(tuple(rows)))


def _reply(message: Message, *, status: int = 200) -> web.Response:
    return web.Response(
        body=message.to_json(),
        status=status,
        content_type="application/json",
        headers={VERSION_HEADER: str(PROTOCOL_VERSION)},
    )


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("TLS needs both a certificate and a key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate or key: {exc}") from exc
    return context


async def serve(
    dispatcher: Dispatcher,
    *,
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    on_ready: Callable[[str], None],
) -> None:
    """Serve until cancelled (or interrupted); ``on_ready`` gets the URL once listening."""
    runner = web.AppRunner(dispatcher.app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        bound_port = runner.addresses[0][1]
        on_ready(f"{'https' if tls else 'http'}://{host}:{bound_port}")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
