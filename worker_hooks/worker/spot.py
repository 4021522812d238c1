"""Watching for a spot interruption notice (EC2 instance metadata, IMDSv2).

EC2 gives a spot instance about two minutes' notice before it reclaims it:
``GET /latest/meta-data/spot/instance-action`` answers 404 until then, and
then ``{"action": "terminate" | "stop" | "hibernate", "time": "<UTC ISO>"}``.
IMDSv2 needs a session token first (``PUT /latest/api/token``).

:class:`SpotWatcher` polls in a thread and sets :attr:`notice` with the
deadline. A metadata service that does not answer at the first try (not on
EC2) ends the watch quietly; later failures are retried (a busy metadata
service must not make a worker miss its notice). Every request is bounded
by ``timeout_s``.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

TOKEN_TTL_S = 21600


@dataclass(frozen=True)
class Notice:
    action: str
    deadline: float  # Unix time


class SpotWatcher:
    def __init__(
        self,
        endpoint: str,
        *,
        poll_s: float = 2.0,
        timeout_s: float = 1.0,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        parsed = urllib.parse.urlsplit(endpoint)
        self._host = parsed.hostname or "169.254.169.254"
        self._port = parsed.port or 80
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.log = log
        self.notice: Notice | None = None
        self.noticed = threading.Event()
        self._stop = threading.Event()
        self._token = ""
        self._thread = threading.Thread(target=self._watch, name="spot-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
        try:
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            return response.status, response.read(65536)
        finally:
            connection.close()

    def _refresh_token(self) -> None:
        status, body = self._request(
            "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)}
        )
        if status != 200:
            raise OSError(f"the metadata service answered {status} for a token")
        self._token = body.decode("ascii", "replace").strip()

    def check(self) -> Notice | None:
        """One look at the instance action; raises OSError if the service did not answer."""
        if not self._token:
            self._refresh_token()
        path = "/latest/meta-data/spot/instance-action"
        status, body = self._request("GET", path, {"X-aws-ec2-metadata-token": self._token})
        if status == 401:  # the token expired
            self._token = ""
            return None
        if status != 200:
            return None
        try:
            action = json.loads(body)
            when = datetime.fromisoformat(str(action["time"]).replace("Z", "+00:00"))
            return Notice(str(action["action"]), when.timestamp())
        except (ValueError, KeyError, TypeError):
            return Notice("terminate", time.time() + 120.0)  # unreadable: assume the worst

    def _watch(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                notice = self.check()
            except (OSError, http.client.HTTPException) as exc:
                if first:
                    self.log(f"no instance metadata service ({exc}); not watching for spot notices")
                    return
                notice = None
            first = False
            if notice is not None:
                self.notice = notice
                self.noticed.set()
                return
            self._stop.wait(self.poll_s)
