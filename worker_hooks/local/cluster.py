"""A dispatcher and workers as real processes on this machine (demo, tests, benchmarks).

Each worker gets its own cache and sandbox directories, as separate nodes
would. Every process is started with ``python -m stager`` in its own
process group, logs to ``<work_dir>/logs/<name>.log``, and is stopped by
:meth:`LocalCluster.stop` (SIGTERM, a bounded wait, then SIGKILL), which a
``with`` block always calls.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from stager.errors import UnreachableError
from worker_hooks.dispatch.client import DispatcherClient
from worker_hooks.dispatch.scheduling import Policy


class LocalCluster:
    def __init__(
        self,
        work_dir: Path,
        env: Mapping[str, str],
        *,
        policy: Policy = Policy.GOOD_CACHE_COMPUTE,
        lease_s: float = 30.0,
        dispatcher_args: Sequence[str] = (),
        ca_file: str | None = None,
    ) -> None:
        self.work_dir = work_dir
        # No instance metadata here: workers need not look for spot notices.
        self.env = {**os.environ, "STAGER_SPOT_METADATA_URL": "off", **env}
        self.policy = policy
        self.lease_s = lease_s
        self.dispatcher_args = list(dispatcher_args)
        self.ca_file = ca_file
        self.token_file = work_dir / "dispatcher.token"
        self.dispatcher: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.url = ""
        self._client: DispatcherClient | None = None

    @property
    def client(self) -> DispatcherClient:
        assert self._client is not None, "start() first"
        return self._client

    def _spawn(
        self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        logs = self.work_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "stager", *args],
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_of(self, name: str) -> str:
        path = self.work_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        """Start the dispatcher (on a free loopback port) and wait until it answers."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if not self.token_file.exists():
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
        self.start_dispatcher()

    def start_dispatcher(self) -> None:
        """Start (or restart, on the same port) the dispatcher on its database."""
        port = self.url.rsplit(":", 1)[1] if self.url else "0"
        url_file = self.work_dir / "dispatcher.url"
        url_file.unlink(missing_ok=True)
        self.dispatcher = self._spawn(
            "dispatcher",
            [
                "dispatcher",
                "serve",
                "--port",
                port,
                "--url-file",
                str(url_file),
                "--db",
                str(self.work_dir / "dispatcher.sqlite"),
                "--token-file",
                str(self.token_file),
                "--policy",
                self.policy.value,
                "--lease-s",
                str(self.lease_s),
                *self.dispatcher_args,
            ],
        )
        deadline = time.monotonic() + 30
        while not url_file.exists() or not url_file.read_text().strip():
            if self.dispatcher.poll() is not None or time.monotonic() > deadline:
                raise UnreachableError(
                    f"the dispatcher did not start: {self.log_of('dispatcher')[-500:]}"
                )
            time.sleep(0.05)
        self.url = url_file.read_text().strip()
        token = self.token_file.read_text().strip()
        self._client = DispatcherClient(self.url, token, ca_file=self.ca_file)

    def add_worker(
        self,
        name: str,
        *args: str,
        cache_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        dispatcher: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a worker with its sandboxes under ``<work_dir>/<name>``.

        Its cache is its own (``<work_dir>/<name>/cache``) unless ``cache_dir``
        names one that several workers share (the NFS-head mode). ``env``: variables
        of this worker's alone (another S3 endpoint, say). ``dispatcher``: the URL it
        reaches the dispatcher at, if not the dispatcher's own (a proxy in between).
        """
        node = self.work_dir / name
        process = self._spawn(
            name,
            [
                "worker",
                "--dispatcher",
                dispatcher or self.url,
                "--token-file",
                str(self.token_file),
                "--worker-id",
                name,
                "--cache-dir",
                str(cache_dir or node / "cache"),
                "--sandbox-dir",
                str(node / "sandboxes"),
                *args,
            ],
            env,
        )
        self.workers[name] = process
        return process

    def wait_for_workers(self, names: Sequence[str], timeout_s: float = 30.0) -> None:
        """Return once every named worker has contacted the dispatcher."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = {w.id for w in self.client.status().workers if w.alive}
            if set(names) <= seen:
                return
            for name in names:
                process = self.workers[name]
                if process.poll() is not None:
                    raise UnreachableError(f"worker {name} exited: {self.log_of(name)[-500:]}")
            if time.monotonic() > deadline:
                raise UnreachableError(f"workers {sorted(set(names) - seen)} did not check in")
            time.sleep(0.1)

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    @classmethod
    def _reap(cls, process: subprocess.Popen[bytes], timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for an ending process, then SIGKILL its group."""
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            cls._signal(process, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        """SIGTERM every worker at once (they drain in parallel), then the dispatcher."""
        for process in self.workers.values():
            self._signal(process, signal.SIGTERM)
        for process in self.workers.values():
            self._reap(process, 30)
        self.stop_dispatcher()

    def stop_dispatcher(self) -> None:
        if self.dispatcher is not None:
            self._signal(self.dispatcher, signal.SIGTERM)
            self._reap(self.dispatcher, 10)
            self.dispatcher = None

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
