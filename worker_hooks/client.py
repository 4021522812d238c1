"""The dispatcher's client, for workers, ``stager submit`` and ``stager status``.

Thread-safe (one urllib3 pool). Transport failures become
:class:`UnreachableError`, 401 :class:`AccessDeniedError`, 409 (a stale
attempt) :class:`PreconditionFailedError`, 404 :class:`NotFoundError`, 400
:class:`ConfigError`; the server's one-line reason is kept. The token goes
only into the Authorization header, never into a message.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

import urllib3

from stager.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    PreconditionFailedError,
    StagerError,
    UnreachableError,
)

TOKEN_ENV = "STAGER_DISPATCHER_TOKEN"
_BY_STATUS: dict[int, type[StagerError]] = {
    400: ConfigError,
    401: AccessDeniedError,
    404: NotFoundError,
    409: PreconditionFailedError,
}


def load_token(token_file: Path | None) -> str:
    """The token from ``token_file``, else $STAGER_DISPATCHER_TOKEN."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token file {token_file}: {exc.strerror}") from exc
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(
            "no dispatcher token",
            hint=f"give --token-file FILE or set {TOKEN_ENV} (see docs/dispatcher.md)",
        )
    return token


class DispatcherClient:
    def __init__(
        self, url: str, token: str, *, ca_file: str | None = None, timeout_s: float = 30.0
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"dispatcher URL {url!r} is not http(s)://host:port")
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._timeout_s = timeout_s
        self._pool = urllib3.PoolManager(
            maxsize=8, retries=False, ca_certs=ca_file, cert_reqs="CERT_REQUIRED"
        )

    def call(self, method: str, path: str, body: Any = None, *, wait_s: float = 0) -> Any:
        try:
            response = self._pool.request(
                method,
                self.url + path,
                body=None if body is None else json.dumps(body).encode(),
                headers=self._headers,
                timeout=urllib3.Timeout(connect=5.0, read=self._timeout_s + wait_s),
            )
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UnreachableError(
                f"the dispatcher at {self.url} is unreachable: {reason}",
                hint="check the URL and that `stager dispatcher serve` runs there",
            ) from exc
        try:
            data = json.loads(response.data or b"{}")
        except ValueError:
            data = {"error": response.data[:200].decode(errors="replace")}
        if response.status >= 400:
            error = _BY_STATUS.get(response.status, StagerError)
            message = data.get("error", f"HTTP {response.status}")
            if response.status == 401:
                raise error(
                    f"the dispatcher refused the token: {message}",
                    hint=f"use the token the dispatcher serves with (--token-file or {TOKEN_ENV})",
                )
            raise error(f"dispatcher: {message}", hint="")
        return data

    # -- the API ----------------------------------------------------------------------

    def submit(self, tasks: list[dict[str, Any]], workflow: str = "default") -> list[str]:
        ids: list[str] = self.call("POST", "/v1/tasks", {"workflow": workflow, "tasks": tasks})[
            "submitted"
        ]
        return ids

    def lease(
        self, worker: str, max_tasks: int, *, wait_s: float, cache: dict[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], float]:
        """Leased tasks (maybe none after ``wait_s``) and the dispatcher's lease length."""
        body = {"worker": worker, "max_tasks": max_tasks, "wait_s": wait_s, "cache": cache}
        answer = self.call("POST", "/v1/lease", body, wait_s=wait_s)
        return answer["leases"], float(answer["lease_s"])

    def heartbeat(
        self,
        worker: str,
        held: list[tuple[str, int]],
        *,
        cache_bytes: int,
        cache: dict[str, Any] | None = None,
    ) -> list[str]:
        body = {"worker": worker, "held": held, "cache_bytes": cache_bytes, "cache": cache}
        drop: list[str] = self.call("POST", "/v1/heartbeat", body)["drop"]
        return drop

    def complete(
        self, task_id: str, attempt: int, worker: str, result: bytes, uses: list[dict[str, Any]]
    ) -> None:
        body = {"worker": worker, "attempt": attempt, "result": result.decode(), "uses": uses}
        self.call("POST", f"/v1/tasks/{task_id}/complete", body)

    def fail(self, task_id: str, attempt: int, worker: str, error: str, *, retry: bool) -> str:
        body = {"worker": worker, "attempt": attempt, "error": error, "retry": retry}
        state: str = self.call("POST", f"/v1/tasks/{task_id}/fail", body)["state"]
        return state

    def release(self, task_id: str, attempt: int, worker: str) -> None:
        self.call("POST", f"/v1/tasks/{task_id}/release", {"worker": worker, "attempt": attempt})

    def cancel(self, task_id: str) -> str:
        state: str = self.call("POST", f"/v1/tasks/{task_id}/cancel", {})["state"]
        return state

    def task(self, task_id: str) -> dict[str, Any]:
        info: dict[str, Any] = self.call("GET", f"/v1/tasks/{task_id}")
        return info

    def status(self, workflow: str | None = None) -> dict[str, Any]:
        query = "?" + urllib.parse.urlencode({"workflow": workflow}) if workflow else ""
        info: dict[str, Any] = self.call("GET", f"/v1/status{query}")
        return info

    def assignments(self, task_id: str | None = None) -> list[tuple[str, int, str]]:
        query = "?" + urllib.parse.urlencode({"task": task_id}) if task_id else ""
        rows = self.call("GET", f"/v1/assignments{query}")["assignments"]
        return [(str(t), int(a), str(w)) for t, a, w in rows]
