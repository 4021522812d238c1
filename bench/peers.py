"""The transfer tools measured side by side: stager and the ones people use today.

Each tool is a :class:`Tool` that builds the command lines of a recursive
upload (a local directory to a prefix) and of a download (a prefix to an
empty directory, or for stager, into an empty node cache). Every command is
run as its own process, so start-up, CPU and peak memory are each tool's
own. Peer tools come from the ``bench`` environment made by ``make bench``
(``.venv-bench``: awscli pins botocore, so it cannot share stager's).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stager.locations import S3Url
from stager.s3server import REGION, LocalS3Server

PEER_VENV_ENV = "STAGER_BENCH_PEERS"


def peer_bin_dir() -> Path:
    """Where the peer tools' executables live ($STAGER_BENCH_PEERS or ./.venv-bench/bin)."""
    return Path(os.environ.get(PEER_VENV_ENV) or Path.cwd() / ".venv-bench" / "bin")


@dataclass(frozen=True)
class Endpoint:
    url: str
    access_key: str
    secret_key: str
    region: str

    @classmethod
    def of(cls, server: LocalS3Server) -> Endpoint:
        """The endpoint and keys of the embedded server."""
        keys = server.credentials
        return cls(server.endpoint_url, keys.access_key, keys.secret_key, REGION)

    def aws_env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }


@dataclass(frozen=True)
class Tool:
    name: str

    def available(self) -> bool:
        return True

    def env(self, endpoint: Endpoint, work: Path) -> Mapping[str, str]:
        return {**os.environ, **endpoint.aws_env()}

    def upload(self, source: Path, dest: S3Url, endpoint: Endpoint) -> list[str]:
        raise NotImplementedError

    def download(self, source: S3Url, dest: Path, endpoint: Endpoint) -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class Stager(Tool):
    name: str = "stager"
    transfer_client: str = "crt"  # "s3transfer": the botocore path, for comparison

    def env(self, endpoint: Endpoint, work: Path) -> Mapping[str, str]:
        return {
            **super().env(endpoint, work),
            "STAGER_STATE_DIR": str(work / "stager-state"),
            "STAGER_TRANSFER_CLIENT": self.transfer_client,
        }

    def _stager(self, endpoint: Endpoint) -> list[str]:
        return [sys.executable, "-m", "stager", "--no-progress", "--endpoint-url", endpoint.url]

    def upload(self, source: Path, dest: S3Url, endpoint: Endpoint) -> list[str]:
        # push keeps the directory's name below the prefix; push its files instead.
        files = sorted(str(p) for p in source.iterdir())
        return [*self._stager(endpoint), "push", *files, "--to", str(dest)]

    def download(self, source: S3Url, dest: Path, endpoint: Endpoint) -> list[str]:
        return [*self._stager(endpoint), "cache", "--cache-dir", str(dest), "fetch", str(source)]


@dataclass(frozen=True)
class _PeerBinary(Tool):
    binary: str = ""

    @property
    def path(self) -> str:
        found = peer_bin_dir() / self.binary
        return str(found) if found.exists() else (shutil.which(self.binary) or str(found))

    def available(self) -> bool:
        return Path(self.path).exists()


@dataclass(frozen=True)
class AwsCli(_PeerBinary):
    name: str = "aws-cli"
    binary: str = "aws"

    def _cp(self, endpoint: Endpoint, source: str, dest: str) -> list[str]:
        return [
            self.path,
            "--endpoint-url",
            endpoint.url,
            "s3",
            "cp",
            "--recursive",
            "--only-show-errors",
            source,
            dest,
        ]

    def upload(self, source: Path, dest: S3Url, endpoint: Endpoint) -> list[str]:
        return self._cp(endpoint, str(source), str(dest))

    def download(self, source: S3Url, dest: Path, endpoint: Endpoint) -> list[str]:
        return self._cp(endpoint, str(source), str(dest))


@dataclass(frozen=True)
class S5cmd(_PeerBinary):
    name: str = "s5cmd"
    binary: str = "s5cmd"

    def upload(self, source: Path, dest: S3Url, endpoint: Endpoint) -> list[str]:
        return [self.path, "--endpoint-url", endpoint.url, "cp", f"{source}/*", str(dest)]

    def download(self, source: S3Url, dest: Path, endpoint: Endpoint) -> list[str]:
        return [self.path, "--endpoint-url", endpoint.url, "cp", f"{source}*", f"{dest}/"]


@dataclass(frozen=True)
class Rclone(_PeerBinary):
    name: str = "rclone"
    binary: str = "rclone"

    def env(self, endpoint: Endpoint, work: Path) -> Mapping[str, str]:
        remote = {
            "TYPE": "s3",
            "PROVIDER": "Other",
            "ENDPOINT": endpoint.url,
            "ACCESS_KEY_ID": endpoint.access_key,
            "SECRET_ACCESS_KEY": endpoint.secret_key,
            "REGION": endpoint.region,
            "FORCE_PATH_STYLE": "true",
        }
        return {
            **super().env(endpoint, work),
            "RCLONE_CONFIG": str(work / "rclone.conf"),
            **{f"RCLONE_CONFIG_BENCH_{k}": v for k, v in remote.items()},
        }

    def upload(self, source: Path, dest: S3Url, endpoint: Endpoint) -> list[str]:
        remote = f"bench:{dest.bucket}/{dest.key}"
        return [self.path, "copy", "--s3-endpoint", endpoint.url, str(source), remote]

    def download(self, source: S3Url, dest: Path, endpoint: Endpoint) -> list[str]:
        remote = f"bench:{source.bucket}/{source.key}"
        return [self.path, "copy", "--s3-endpoint", endpoint.url, remote, str(dest)]


_S3FS_SCRIPT = """
import sys, s3fs
op, src, dst, endpoint = sys.argv[1:]
fs = s3fs.S3FileSystem(endpoint_url=endpoint)
(fs.put if op == "put" else fs.get)(src, dst, recursive=True)
"""


@dataclass(frozen=True)
class S3fs(Tool):
    """fsspec/s3fs ``put``/``get``, from stager's own environment (it is a dependency)."""

    name: str = "s3fs"

    def upload(self, source: Path, dest: S3Url, endpoint: Endpoint) -> list[str]:
        return [sys.executable, "-c", _S3FS_SCRIPT, "put", f"{source}/", str(dest), endpoint.url]

    def download(self, source: S3Url, dest: Path, endpoint: Endpoint) -> list[str]:
        return [sys.executable, "-c", _S3FS_SCRIPT, "get", str(source), f"{dest}/", endpoint.url]


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Stager(),
        S5cmd(),
        AwsCli(),
        Rclone(),
        S3fs(),
        Stager("stager-s3transfer", transfer_client="s3transfer"),
    )
}
# What a run measures unless told otherwise (stager's other byte mover is on request).
DEFAULT_TOOLS = ("stager", "s5cmd", "aws-cli", "rclone", "s3fs")
