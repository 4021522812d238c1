"""Result manifests: the record that a task's outputs are complete and durable.

The result manifest for a task is written last, create-only; its presence
means every output it lists was durable when it was written (DESIGN.md
invariant 2). The JSON form is in docs/task-spec.md; ``format`` gates
readers. Pure: no I/O.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from stager.digest import Digest, digest_bytes
from stager.errors import StagerError
from stager.locations import S3Url

FORMAT = "stager-result/1"


class Persist(enum.Enum):
    """Where an output is durable when its task counts as done (docs/task-spec.md).

    ``s3``: in S3. ``mirror``: in its node's cache and on ``mirrors`` peer
    nodes' caches, each writing it behind to S3. ``local``: only in its
    node's cache, for dependants to fetch from there (recomputed if lost).
    """

    S3 = "s3"
    MIRROR = "mirror"
    LOCAL = "local"


@dataclass(frozen=True)
class FileRecord:
    """One file a task read or wrote; ``kept`` says where an output was when it was recorded
    (``s3``: at ``url``; otherwise on nodes, ``url`` being where it goes, if ever)."""

    path: str
    url: S3Url
    digest: Digest
    size: int
    kept: Persist = Persist.S3

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "path": self.path,
            "url": str(self.url),
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.kept is not Persist.S3:  # absent in results written before the policies
            body["kept"] = self.kept.value
        return body

    @classmethod
    def from_json(cls, item: Any) -> FileRecord:
        size = item["size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"size {size!r} is not a number of bytes")
        return cls(
            path=str(item["path"]),
            url=S3Url.parse(str(item["url"])),
            digest=Digest.parse(str(item["digest"])),
            size=size,
            kept=Persist(item.get("kept", "s3")),
        )


@dataclass(frozen=True)
class ResultManifest:
    task_id: str
    task_key: str
    command: tuple[str, ...]
    exit_code: int
    host: str
    started_at: str
    timings_s: dict[str, float] = field(default_factory=dict)
    inputs: tuple[FileRecord, ...] = ()
    outputs: tuple[FileRecord, ...] = ()
    logs: tuple[FileRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "task_id": self.task_id,
            "task_key": self.task_key,
            "command": list(self.command),
            "exit_code": self.exit_code,
            "host": self.host,
            "started_at": self.started_at,
            "timings_s": dict(self.timings_s),
            "inputs": [r.to_json() for r in self.inputs],
            "outputs": [r.to_json() for r in self.outputs],
            "logs": [r.to_json() for r in self.logs],
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, body: Any) -> ResultManifest:
        """Check a decoded manifest; anything malformed raises StagerError."""
        try:
            if body.get("format") != FORMAT:
                raise StagerError(f"unsupported result format {body.get('format')!r}")

            def records(key: str) -> tuple[FileRecord, ...]:
                return tuple(FileRecord.from_json(item) for item in body[key])

            return cls(
                task_id=str(body["task_id"]),
                task_key=str(body["task_key"]),
                command=tuple(str(word) for word in body["command"]),
                exit_code=int(body["exit_code"]),
                host=str(body["host"]),
                started_at=str(body["started_at"]),
                timings_s={str(k): float(v) for k, v in body["timings_s"].items()},
                inputs=records("inputs"),
                outputs=records("outputs"),
                logs=records("logs"),
            )
        except StagerError as exc:
            raise StagerError(f"malformed result manifest: {exc.message}") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StagerError(f"malformed result manifest: {exc!r}") from exc

    @classmethod
    def from_bytes(cls, data: bytes) -> ResultManifest:
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise StagerError(f"malformed result manifest: not JSON ({exc})") from exc
        return cls.from_json(body)


SEGMENT_FORMAT = "stager-result-segment/1"


@dataclass(frozen=True)
class ResultSegment:
    """The results of many tasks one worker completed, in one object (docs/task-spec.md).

    JSON lines: a header (format, worker, time, count), one result manifest per
    line, and an end line with the digest of every byte before it. A segment
    cut short, or changed, fails :meth:`from_bytes` and so never counts.
    """

    worker: str
    written_at: str
    results: tuple[ResultManifest, ...]

    def to_bytes(self) -> bytes:
        header = {
            "format": SEGMENT_FORMAT,
            "worker": self.worker,
            "written_at": self.written_at,
            "count": len(self.results),
        }
        lines = [header, *(r.to_json() for r in self.results)]
        body = b"".join(json.dumps(line, sort_keys=True).encode() + b"\n" for line in lines)
        return body + json.dumps({"end": str(digest_bytes(body))}).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> ResultSegment:
        """Check and decode a segment; anything cut short or malformed raises StagerError."""
        body, _, last = data.rstrip(b"\n").rpartition(b"\n")
        body += b"\n"
        try:
            end = json.loads(last)
            if not isinstance(end, dict) or end.get("end") != str(digest_bytes(body)):
                raise StagerError("result segment is incomplete: its end line does not match")
            header, *lines = (json.loads(line) for line in body.splitlines())
            if header.get("format") != SEGMENT_FORMAT:
                raise StagerError(f"unsupported result segment format {header.get('format')!r}")
            if header.get("count") != len(lines):
                raise StagerError("result segment is incomplete: its count does not match")
            results = tuple(ResultManifest.from_json(line) for line in lines)
            return cls(str(header["worker"]), str(header["written_at"]), results)
        except StagerError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise StagerError(f"malformed result segment: {exc!r}") from exc
