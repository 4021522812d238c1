"""``stager dispatcher serve``: the task queue as an HTTP/JSON service (aiohttp).

Workers only ever connect out to it (they pull), so nodes behind NAT work.
Every request must carry ``Authorization: Bearer <token>``, compared in
constant time; without it the answer is 401 and nothing is read. The token
is never logged (there is no access log). The API is in docs/dispatcher.md.

One event loop owns the :class:`~worker_hooks.taskdb.TaskDB`; each request
is one short transaction, so no lock is needed. A lease request with no
work waits (long poll) on a condition that every state change notifies.
A background task expires leases every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from stager.errors import ConfigError, NotFoundError, PreconditionFailedError, StagerError
from worker_hooks.results import ResultManifest
from worker_hooks.taskdb import InputUse, TaskDB

MAX_WAIT_S = 60.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _status_of(exc: StagerError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, PreconditionFailedError):
        return 409
    if isinstance(exc, ConfigError):
        return 400
    return 500


@contextlib.contextmanager
def _parsing(what: str) -> Iterator[None]:
    """Turn a malformed request field into a 400 (ConfigError), not a 500."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"malformed {what}: {exc!r}") from exc


def _field(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...
) -> Any:
    value = body.get(name, default)
    if value is ... or (value is not None and not isinstance(value, kind)):
        raise ConfigError(f"request field {name!r} is missing or of the wrong type")
    return value


class Dispatcher:
    def __init__(self, db: TaskDB, token: str, *, expire_every_s: float = 1.0) -> None:
        if not token:
            raise ConfigError("the dispatcher needs a token", hint="see docs/dispatcher.md")
        self.db = db
        self._token = ("Bearer " + token).encode()
        self._expire_every_s = expire_every_s
        self._changed = asyncio.Condition()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth, self._errors], client_max_size=64 << 20)
        app.add_routes(
            [
                web.post("/v1/tasks", self.submit),
                web.get("/v1/tasks/{id}", self.get_task),
                web.post("/v1/tasks/{id}/complete", self.complete),
                web.post("/v1/tasks/{id}/fail", self.fail),
                web.post("/v1/tasks/{id}/release", self.release),
                web.post("/v1/tasks/{id}/cancel", self.cancel),
                web.post("/v1/lease", self.lease),
                web.post("/v1/heartbeat", self.heartbeat),
                web.get("/v1/status", self.status),
                web.get("/v1/assignments", self.assignments),
            ]
        )
        app.cleanup_ctx.append(self._expiry_loop)
        return app

    # -- middleware -----------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
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
            return web.json_response({"error": exc.one_line()}, status=_status_of(exc))

    async def _changed_now(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _expiry_loop(self, app: web.Application) -> AsyncIterator[None]:
        async def expire_forever() -> None:
            while True:
                await asyncio.sleep(self._expire_every_s)
                if self.db.expire():
                    await self._changed_now()

        task = asyncio.create_task(expire_forever())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as exc:
            raise ConfigError(f"the request body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ConfigError("the request body must be a JSON object")
        return body

    # -- handlers -----------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        tasks = _field(body, "tasks", list)
        ids = self.db.submit_bodies(str(_field(body, "workflow", str, "default")), tasks)
        await self._changed_now()
        return web.json_response({"submitted": ids})

    async def get_task(self, request: web.Request) -> web.Response:
        return web.json_response(self.db.task(request.match_info["id"]))

    async def lease(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        worker = _field(body, "worker", str)
        count = max(0, min(int(_field(body, "max_tasks", int, 1)), 1000))
        wait_s = min(float(_field(body, "wait_s", (int, float), 0)), MAX_WAIT_S)
        self._apply_cache_report(worker, body.get("cache"))
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            leases = self.db.lease(worker, count) if count else []
            remaining = deadline - asyncio.get_running_loop().time()
            if leases or remaining <= 0:
                break
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
        return web.json_response(
            {
                "leases": [
                    {
                        "task_id": x.task_id,
                        "attempt": x.attempt,
                        "spec": x.body,
                        "expires_at": x.expires_at,
                    }
                    for x in leases
                ],
                "lease_s": self.db.limits.lease_s,
            }
        )

    def _apply_cache_report(self, worker: str, report: Any) -> None:
        if report is None:
            return
        with _parsing("cache report"):
            added = [str(d) for d in report.get("added", [])]
            removed = [str(d) for d in report.get("removed", [])]
            full = bool(report.get("full", False))
        self.db.report_cache(worker, added=added, removed=removed, full=full)

    async def heartbeat(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        worker = _field(body, "worker", str)
        with _parsing("heartbeat"):
            held = [(str(task_id), int(attempt)) for task_id, attempt in body.get("held", [])]
            cache_bytes = None if body.get("cache_bytes") is None else int(body["cache_bytes"])
        self._apply_cache_report(worker, body.get("cache"))
        drop = self.db.heartbeat(worker, held, cache_bytes=cache_bytes)
        return web.json_response({"drop": drop})

    async def complete(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            result = ResultManifest.from_json(str(_field(body, "result", str)).encode())
        except StagerError as exc:  # a client's bad document: 400, not a server error
            raise ConfigError(f"malformed completion: {exc.message}") from exc
        with _parsing("completion"):
            uses = [
                InputUse(str(u["digest"]), int(u["size"]), bool(u["from_cache"]))
                for u in body.get("uses", [])
            ]
        self.db.complete(
            request.match_info["id"],
            int(_field(body, "attempt", int)),
            _field(body, "worker", str),
            result,
            uses,
        )
        await self._changed_now()
        return web.json_response({"state": "done"})

    async def fail(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        state = self.db.fail(
            request.match_info["id"],
            int(_field(body, "attempt", int)),
            _field(body, "worker", str),
            str(_field(body, "error", str, "failed")),
            retry=bool(body.get("retry", False)),
        )
        await self._changed_now()
        return web.json_response({"state": state})

    async def release(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.db.release(
            request.match_info["id"],
            int(_field(body, "attempt", int)),
            _field(body, "worker", str),
        )
        await self._changed_now()
        return web.json_response({"state": "queued"})

    async def cancel(self, request: web.Request) -> web.Response:
        state = self.db.cancel(request.match_info["id"])
        await self._changed_now()
        return web.json_response({"state": state})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.db.status(request.query.get("workflow")))

    async def assignments(self, request: web.Request) -> web.Response:
        rows = self.db.assignments(request.query.get("task"))
        return web.json_response({"assignments": [list(row) for row in rows]})


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
