"""Task specs: what one job needs, as frozen values that only hold valid specs.

They are built by :func:`~worker_hooks.task.parse.parse_spec`, which checks
every field before any I/O; :meth:`TaskSpec.to_json` is its inverse
(``parse_spec(spec.to_json()) == spec``). docs/task-spec.md is the contract.

An input's source is an S3 object or a :class:`TaskRef`
(``task://<producer>/<path>``), another task's declared output that the
dispatcher resolves (:meth:`TaskSpec.resolved`) once the producer has
committed. Pure: no I/O, no cache, no S3 client.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from stager.digest import Digest
from stager.errors import ConfigError, StagerError
from stager.locations import S3Url, safe_relative_path
from worker_hooks.task.result import Persist, ResultManifest

FORMAT = "stager-task/1"
TASK_SCHEME = "task://"
GLOB_CHARACTERS = frozenset("*?[")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


MAX_MIRRORS = 8
MAX_COLLECTION_COUNT = 10_000  # objects in one collection input, unless it says otherwise
MAX_COLLECTION_BYTES = 1 << 40


def is_collection_path(path: str) -> bool:
    """A directory (ends in '/') or a glob: names any number of files."""
    return path.endswith("/") or bool(GLOB_CHARACTERS & set(path))


def glob_base(path: str) -> str:
    """The part of a glob before its first wildcard, up to a '/' ('' or 'dir/')."""
    cut = min((path.index(c) for c in GLOB_CHARACTERS if c in path), default=len(path))
    return path[: path.rfind("/", 0, cut) + 1]


def collection_member(pattern: str, path: str) -> str | None:
    """Where ``path`` goes below a collection's destination: its part after the
    directory (or the glob's base), if ``pattern`` takes it; else None."""
    if pattern.endswith("/"):
        return path[len(pattern) :] if path.startswith(pattern) and path != pattern else None
    if fnmatch.fnmatchcase(path, pattern):
        return path[len(glob_base(pattern)) :]
    return None


class OutputKind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    GLOB = "glob"


def valid_task_id(text: str) -> bool:
    """1-128 letters, digits, '.', '_' or '-' (a task's id, and a workflow's name)."""
    return bool(_ID_RE.match(text))


def qualified_id(workflow: str, task: str) -> str:
    """A task's id at a dispatcher: ``<workflow>/<task id>``, since task ids are unique
    within their workflow only."""
    return f"{workflow}/{task}"


def task_of(qualified: str) -> str:
    """The task id within its workflow (what a spec, a result and a user call it)."""
    return qualified.rpartition("/")[2]


@dataclass(frozen=True)
class TaskRef:
    """``task://<producer>/<path>``: the file ``producer`` declares at ``path``."""

    producer: str
    path: str

    @classmethod
    def parse(cls, text: str) -> TaskRef:
        """A path ending in '/' (a directory) or holding a glob names many files."""
        producer, _, path = text[len(TASK_SCHEME) :].partition("/")
        if not text.startswith(TASK_SCHEME) or not valid_task_id(producer) or not path:
            raise ConfigError(f"task reference {text!r} must look like task://<task id>/<path>")
        checked = str(safe_relative_path(path.rstrip("/") or path, what=f"path in {text!r}"))
        return cls(producer, checked + "/" if path.endswith("/") else checked)

    @property
    def is_collection(self) -> bool:
        return is_collection_path(self.path)

    def __str__(self) -> str:
        return f"{TASK_SCHEME}{self.producer}/{self.path}"


@dataclass(frozen=True)
class InputSpec:
    """One input: an S3 object (or another task's output) and its sandbox path."""

    source: S3Url | TaskRef
    path: str
    digest: Digest | None = None
    size: int | None = None
    # A collection (an S3 prefix or glob, a producer's directory or glob): staged as a
    # directory at ``path``, refused beyond these bounds.
    max_count: int = MAX_COLLECTION_COUNT
    max_bytes: int = MAX_COLLECTION_BYTES
    # The task is a template run once per file of this collection (a producer's
    # directory or glob), that file staged at ``path``; see worker_hooks.task.mapping.
    each: bool = False

    @property
    def is_collection(self) -> bool:
        if isinstance(self.source, TaskRef):
            return self.source.is_collection
        return self.source.is_prefix or bool(GLOB_CHARACTERS & set(self.source.key))

    def to_json(self) -> dict[str, Any]:
        body = _object_json(self.source, self.path, self.digest, self.size)
        if self.max_count != MAX_COLLECTION_COUNT:
            body["max_count"] = self.max_count
        if self.max_bytes != MAX_COLLECTION_BYTES:
            body["max_bytes"] = self.max_bytes
        if self.each:
            body["each"] = True
        return body


@dataclass(frozen=True)
class OutputSpec:
    """A file, a directory (path ends in '/') or a glob, and where it goes."""

    path: str
    to: S3Url
    persist: Persist = Persist.S3
    mirrors: int = 1  # peer copies, for Persist.MIRROR

    @property
    def kind(self) -> OutputKind:
        if GLOB_CHARACTERS & set(self.path):
            return OutputKind.GLOB
        return OutputKind.DIR if self.path.endswith("/") else OutputKind.FILE

    def provides(self, path: str) -> bool:
        """Whether a file at sandbox ``path`` is one this output declares."""
        if self.kind is OutputKind.FILE:
            return path == self.path
        if self.kind is OutputKind.DIR:
            return path.startswith(self.path)
        return fnmatch.fnmatchcase(path, self.path)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "path": self.path,
            "to": str(self.to),
            "persist": self.persist.value,
        }
        if self.persist is Persist.MIRROR:
            body["mirrors"] = self.mirrors
        return body


@dataclass(frozen=True)
class BundleSpec:
    """An archive extracted once per node and shared, shown in the sandbox at ``path``."""

    source: S3Url
    path: str = "app"
    digest: Digest | None = None
    size: int | None = None

    def to_json(self) -> dict[str, Any]:
        return _object_json(self.source, self.path, self.digest, self.size)


@dataclass(frozen=True)
class TaskSpec:
    id: str
    command: tuple[str, ...]
    shell: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    bundle: BundleSpec | None = None
    scratch_bytes: int = 0
    results: S3Url | None = None
    pass_env: tuple[str, ...] = ()  # names of the wrapper's variables the command gets

    @property
    def results_prefix(self) -> S3Url:
        """Where result manifests and logs go: given, or beside the first output."""
        if self.results is not None:
            return self.results.as_prefix()
        if not self.outputs:
            raise ConfigError(
                f"task {self.id} declares no outputs, so it needs 'results'",
                hint="give a results prefix (--results s3://bucket/prefix/)",
            )
        return S3Url(self.outputs[0].to.bucket, ".stager/results/")

    @property
    def mapped(self) -> bool:
        """A template run once per file of its ``each`` input (not itself leased)."""
        return any(item.each for item in self.inputs)

    @property
    def producers(self) -> frozenset[str]:
        """The tasks whose outputs this one still waits for."""
        return frozenset(i.source.producer for i in self.inputs if isinstance(i.source, TaskRef))

    def known_inputs(self) -> tuple[tuple[Digest, int], ...]:
        """(digest, size) of the inputs whose digest is known (for scheduling)."""
        return tuple((i.digest, i.size or 0) for i in self.inputs if i.digest is not None)

    def unknown_inputs(self) -> tuple[tuple[S3Url, int], ...]:
        """(object, size if given) of the S3 inputs whose digest is not known."""
        return tuple(
            (i.source, i.size or 0)
            for i in self.inputs
            if i.digest is None and isinstance(i.source, S3Url)
        )

    def resolved(self, producer: str, result: ResultManifest) -> TaskSpec:
        """This spec with its references to ``producer`` replaced by what it recorded
        (a collection by every file it recorded there, each below the input's path)."""
        outputs = {record.path: record for record in result.outputs}
        inputs: list[InputSpec] = []
        for item in self.inputs:
            ref = item.source
            if not isinstance(ref, TaskRef) or ref.producer != producer:
                inputs.append(item)
                continue
            if ref.is_collection:
                members = [
                    replace(
                        item,
                        source=record.url,
                        path=f"{item.path}/{member}",
                        digest=record.digest,
                        size=record.size,
                    )
                    for path, record in sorted(outputs.items())
                    if (member := collection_member(ref.path, path))
                ]
                check_collection(self.id, item, [m.size or 0 for m in members])
                inputs.extend(members)
                continue
            record = outputs.get(ref.path)
            if record is None:
                raise StagerError(
                    f"task {producer} recorded no output {ref.path} (it has: "
                    f"{', '.join(sorted(outputs)) or 'none'})",
                    hint="make the input name a file the producer declares",
                )
            inputs.append(replace(item, source=record.url, digest=record.digest, size=record.size))
        return replace(self, inputs=tuple(inputs))

    def to_json(self) -> dict[str, Any]:
        """The spec document (``parse_spec`` reads it back to an equal spec)."""
        body: dict[str, Any] = {
            "format": FORMAT,
            "id": self.id,
            "command": self.command[0] if self.shell else list(self.command),
            "shell": self.shell,
            "env": dict(self.env),
            "inputs": [item.to_json() for item in self.inputs],
            "outputs": [item.to_json() for item in self.outputs],
            "scratch_bytes": self.scratch_bytes,
        }
        if self.timeout_s is not None:
            body["timeout_s"] = self.timeout_s
        if self.bundle is not None:
            body["bundle"] = self.bundle.to_json()
        if self.results is not None:
            body["results"] = str(self.results)
        if self.pass_env:
            body["pass_env"] = list(self.pass_env)
        return body


def check_collection(task: str, item: InputSpec, sizes: list[int]) -> None:
    """Refuse a collection beyond its bounds (the task's own failure)."""
    if len(sizes) > item.max_count:
        raise ConfigError(
            f"task {task}: {item.source} holds {len(sizes)} files, more than its max_count "
            f"{item.max_count}",
            hint="raise the input's max_count, or narrow the collection",
        )
    if sum(sizes) > item.max_bytes:
        raise ConfigError(
            f"task {task}: {item.source} holds {sum(sizes)} bytes, more than its max_bytes "
            f"{item.max_bytes}",
            hint="raise the input's max_bytes, or narrow the collection",
        )


def _object_json(
    source: S3Url | TaskRef, path: str, digest: Digest | None, size: int | None
) -> dict[str, Any]:
    """An input's or a bundle's JSON form: what is not known is left out."""
    body: dict[str, Any] = {"source": str(source), "path": path}
    if digest is not None:
        body["digest"] = str(digest)
    if size is not None:
        body["size"] = size
    return body
