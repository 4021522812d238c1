"""Result manifests: the record that a task's outputs are complete and durable.

A task's *key* names what it computes: its command, environment, input
identities (digests), bundle and output declarations, but not its id or
timeout. The result manifest for a key is written last, create-only, at
``<results prefix><key>/result.json``; its presence means every output it
lists was durable when it was written (DESIGN.md invariant 2). Logs of every
run, failed ones included, sit beside it. The JSON form is in
docs/task-spec.md; ``format`` gates readers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from stager.digest import digest_bytes, parse_digest
from stager.errors import IntegrityError, NotFoundError, StagerError
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.parallel import run_all
from worker_hooks.taskspec import TaskSpec

FORMAT = "stager-result/1"


@dataclass(frozen=True)
class FileRecord:
    path: str
    url: str
    digest: str
    size: int


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

    def to_json(self) -> bytes:
        body = {"format": FORMAT, **asdict(self)}
        return json.dumps(body, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> ResultManifest:
        try:
            body: dict[str, Any] = json.loads(data)
            if body.get("format") != FORMAT:
                raise StagerError(f"unsupported result format {body.get('format')!r}")

            def records(key: str) -> tuple[FileRecord, ...]:
                return tuple(
                    FileRecord(
                        path=str(item["path"]),
                        url=str(item["url"]),
                        digest=parse_digest(str(item["digest"])),
                        size=int(item["size"]),
                    )
                    for item in body[key]
                )

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
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StagerError(f"malformed result manifest: {exc}") from exc


def task_key(spec: TaskSpec, input_identities: list[str], bundle_identity: str | None) -> str:
    """The hex key of what ``spec`` computes from inputs with these identities."""
    body = {
        "command": list(spec.command),
        "shell": spec.shell,
        "env": dict(sorted(spec.env.items())),
        "inputs": [
            [item.path, ident] for item, ident in zip(spec.inputs, input_identities, strict=True)
        ],
        "outputs": [[o.path, str(o.to), o.persist] for o in spec.outputs],
        "bundle": [spec.bundle.path, bundle_identity] if spec.bundle else None,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return digest_bytes(canonical).split(":", 1)[1]


def result_url(spec: TaskSpec, key: str) -> S3Url:
    return spec.results_prefix.child(f"{key}/result.json")


def log_url(spec: TaskSpec, key: str, name: str) -> S3Url:
    return spec.results_prefix.child(f"{key}/{name}")


def committed_result(store: ObjectStore, url: S3Url, *, workers: int = 16) -> ResultManifest | None:
    """The result at ``url`` if it exists and every output it lists is still intact.

    Outputs are checked with parallel HEADs. A result that cannot be read
    raises :class:`IntegrityError` (``--force`` replaces it).
    """
    try:
        data = store.get_bytes(url)
    except NotFoundError:
        return None
    try:
        manifest = ResultManifest.from_json(data)
    except StagerError as exc:
        raise IntegrityError(
            f"the recorded result {url} is unreadable: {exc.message}",
            hint="run the task with --force to replace it",
        ) from exc

    def intact(record: FileRecord) -> bool:
        info = store.head(S3Url.parse(record.url))
        return info is not None and info.digest == record.digest and info.size == record.size

    return manifest if all(run_all(intact, manifest.outputs, workers=workers)) else None
