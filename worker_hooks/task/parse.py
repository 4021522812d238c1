"""Reading a task spec document (decoded JSON or YAML) into a :class:`TaskSpec`.

``parse_spec`` returns a frozen spec or raises
:class:`~stager.errors.ConfigError` naming the field at fault
(``outputs[1].path``). Every path is checked component by component, every
URL parsed, every size bounded; no other exception escapes, whatever the
input (a property the unit tests fuzz). Pure: no I/O.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from stager.digest import Digest
from stager.errors import ConfigError, StagerError, UnsafePathError
from stager.locations import S3Url, safe_relative_path
from stager.units import parse_size
from worker_hooks.task.mapping import MAX_TEMPLATE_ID
from worker_hooks.task.result import Persist
from worker_hooks.task.spec import (
    FORMAT,
    MAX_COLLECTION_BYTES,
    MAX_COLLECTION_COUNT,
    MAX_MIRRORS,
    TASK_SCHEME,
    BundleSpec,
    InputSpec,
    OutputKind,
    OutputSpec,
    TaskRef,
    TaskSpec,
    valid_task_id,
)

MAX_SIZE_BYTES = 2**60
SPEC_HINT = "fix the field named above; the format is in docs/task-spec.md"
MAPPED_HINT = "a task mapped over a collection is described in docs/workflows.md (each)"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEYS = frozenset(
    {
        "format",
        "id",
        "command",
        "shell",
        "env",
        "timeout_s",
        "inputs",
        "outputs",
        "bundle",
        "scratch_bytes",
        "results",
        "pass_env",
    }
)


class _Fields:
    """Typed access to one JSON object; every error names the field."""

    def __init__(self, body: Any, where: str) -> None:
        if not isinstance(body, dict):
            raise ConfigError(f"task spec: {where or 'the spec'} must be an object", hint=SPEC_HINT)
        self.body = body
        self.where = where

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"task spec: {self.name(key)} {problem}", hint=SPEC_HINT)

    def string(self, key: str, default: str | None = None) -> str:
        value = self.body.get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, "must be a string" if key in self.body else "is required")
        if "\x00" in value:
            raise self.fail(key, "contains a NUL byte")
        return value

    def optional_string(self, key: str) -> str | None:
        return None if self.body.get(key) is None else self.string(key)

    def url(self, key: str) -> S3Url:
        try:
            return S3Url.parse(self.string(key))
        except StagerError as exc:
            raise self.fail(key, f"is not a valid S3 URL: {exc.message}") from exc

    def path(self, key: str, default: str | None = None) -> PurePosixPath:
        text = self.string(key, default)
        try:
            return safe_relative_path(text.rstrip("/") or text, what=self.name(key))
        except StagerError as exc:
            raise UnsafePathError(f"task spec: {exc.message}", hint=exc.hint) from exc

    def size(self, key: str) -> int | None:
        value = self.body.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = parse_size(value)
            except (StagerError, ValueError, OverflowError) as exc:
                raise self.fail(key, f"is not a size: {value!r}") from exc
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "must be a number of bytes")
        if not 0 <= value <= MAX_SIZE_BYTES:
            raise self.fail(key, f"is out of range: {value}")
        return value

    def digest(self, key: str) -> Digest | None:
        text = self.optional_string(key)
        if text is None:
            return None
        try:
            return Digest.parse(text)
        except StagerError as exc:
            raise self.fail(key, f"is not a digest: {text[:80]!r}") from exc

    def items(self, key: str) -> list[Any]:
        value = self.body.get(key, [])
        if not isinstance(value, list):
            raise self.fail(key, "must be a list")
        return value

    def reject_unknown(self, allowed: frozenset[str]) -> None:
        unknown = sorted(str(key) for key in self.body if key not in allowed)
        if unknown:
            guess = did_you_mean(unknown[0], allowed)
            raise ConfigError(
                f"task spec: unknown field {self.name(unknown[0])}{guess}", hint=SPEC_HINT
            )


def did_you_mean(word: str, known: frozenset[str]) -> str:
    """`` (did you mean 'timeout_s'?)`` for a close known word; else nothing."""
    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _command(fields: _Fields, shell: bool) -> tuple[str, ...]:
    value = fields.body.get("command")
    if shell:
        return (fields.string("command"),)
    if not isinstance(value, list) or not value:
        raise fields.fail("command", "must be a non-empty list of strings (or set shell: true)")
    for number, word in enumerate(value):
        if not isinstance(word, str):
            shown = json.dumps(word, default=str)[:80]
            raise fields.fail(
                f"command[{number}]",
                f"must be a string, not {shown} (in YAML, quote it: '{shown}')",
            )
        if "\x00" in word:
            raise fields.fail(f"command[{number}]", "contains a NUL byte")
    if not value[0]:
        raise fields.fail("command[0]", "is empty")
    return tuple(value)


def _env(fields: _Fields) -> dict[str, str]:
    value = fields.body.get("env", {})
    if not isinstance(value, dict):
        raise fields.fail("env", "must be an object of strings")
    for name, text in value.items():
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            raise fields.fail("env", f"has an invalid variable name {name!r}")
        if not isinstance(text, str) or "\x00" in text:
            raise fields.fail(f"env.{name}", "must be a string without NUL bytes")
    return dict(value)


def _pass_env(fields: _Fields) -> tuple[str, ...]:
    names = fields.items("pass_env")
    for number, name in enumerate(names):
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            raise fields.fail(f"pass_env[{number}]", "must be a variable name")
    return tuple(names)


def _timeout(fields: _Fields) -> float | None:
    value = fields.body.get("timeout_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise fields.fail("timeout_s", "must be a positive number of seconds")
    return float(value)


def _input(body: Any, where: str) -> InputSpec:
    fields = _Fields(body, where)
    fields.reject_unknown(
        frozenset({"source", "path", "digest", "size", "max_count", "max_bytes", "each"})
    )
    source: S3Url | TaskRef
    if fields.string("source").startswith(TASK_SCHEME):
        try:
            source = TaskRef.parse(fields.string("source"))
        except StagerError as exc:
            raise fields.fail("source", exc.message) from exc
    else:
        source = fields.url("source")
    item = InputSpec(
        source=source,
        path=str(fields.path("path")),
        digest=fields.digest("digest"),
        size=fields.size("size"),
        max_count=_count(fields, "max_count", MAX_COLLECTION_COUNT),
        max_bytes=fields.size("max_bytes") or MAX_COLLECTION_BYTES,
        each=_flag(fields, "each"),
    )
    if item.is_collection and (item.digest is not None or item.size is not None):
        raise fields.fail("digest", "and size are for single files, not a collection")
    resolved = isinstance(source, S3Url) and item.digest is not None  # by the dispatcher
    if item.each and not ((isinstance(source, TaskRef) and item.is_collection) or resolved):
        raise fields.fail(
            "each", "needs a producer's directory or glob as source (task://<id>/dir/ or a glob)"
        )
    return item


def _flag(fields: _Fields, key: str) -> bool:
    value = fields.body.get(key, False)
    if not isinstance(value, bool):
        raise fields.fail(key, "must be true or false")
    return value


def _count(fields: _Fields, key: str, default: int) -> int:
    value = fields.body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**9:
        raise fields.fail(key, "must be a whole number from 1 to 1000000000")
    return value


def _output(body: Any, where: str) -> OutputSpec:
    fields = _Fields(body, where)
    fields.reject_unknown(frozenset({"path", "to", "persist", "mirrors"}))
    path = str(fields.path("path"))
    text = fields.string("path")
    persist = fields.string("persist", "s3")
    if persist not in {p.value for p in Persist}:
        supported = ", ".join(p.value for p in Persist)
        raise fields.fail("persist", f"{persist!r} is not supported (supported: {supported})")
    mirrors = fields.body.get("mirrors", 1)
    if isinstance(mirrors, bool) or not isinstance(mirrors, int) or not 1 <= mirrors <= MAX_MIRRORS:
        raise fields.fail("mirrors", f"must be a whole number from 1 to {MAX_MIRRORS}")
    if "mirrors" in fields.body and persist != Persist.MIRROR.value:
        raise fields.fail("mirrors", "is only for persist: mirror")
    output = OutputSpec(
        path + "/" if text.endswith("/") else path, fields.url("to"), Persist(persist), mirrors
    )
    if output.kind is not OutputKind.FILE and not output.to.is_prefix:
        raise fields.fail("to", f"must end in '/' for a {output.kind.value} output")
    return output


def _bundle(body: Any) -> BundleSpec:
    fields = _Fields(body, "bundle")
    fields.reject_unknown(frozenset({"source", "path", "digest", "size"}))
    return BundleSpec(
        source=fields.url("source"),
        path=str(fields.path("path", "app")),
        digest=fields.digest("digest"),
        size=fields.size("size"),
    )


def _overlaps(a: str, b: str) -> bool:
    """True when one sandbox path is the other or lies inside it (``a`` and ``a/b``)."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _unique_paths(spec_inputs: Sequence[InputSpec], bundle: BundleSpec | None) -> None:
    """No two inputs (or an input and the bundle) may claim one place in the sandbox."""
    claimed: list[tuple[str, str]] = []
    named = [(f"inputs[{n}].path", item.path) for n, item in enumerate(spec_inputs)]
    for field_name, path in [*named, *([("bundle.path", bundle.path)] if bundle else [])]:
        for other_name, other in claimed:
            if _overlaps(path, other):
                raise ConfigError(
                    f"task spec: {field_name} {path!r} overlaps {other_name} {other!r}",
                    hint="give every input its own place: one cannot be a file and a folder",
                )
        claimed.append((field_name, path))


def _check_template(inputs: Sequence[InputSpec], outputs: Sequence[OutputSpec]) -> None:
    """A task mapped over a collection: one ``each`` input, and outputs that each run
    writes below its own folder (so every ``to`` is a prefix)."""
    mapped = [n for n, item in enumerate(inputs) if item.each and isinstance(item.source, TaskRef)]
    if len(mapped) > 1:
        raise ConfigError(
            f"task spec: inputs[{mapped[1]}] is a second 'each' input", hint=MAPPED_HINT
        )
    for number, output in enumerate(outputs):
        if any(item.each for item in inputs) and not output.to.is_prefix:
            raise ConfigError(
                f"task spec: outputs[{number}].to must end in '/' in a task with an 'each' "
                "input: every run writes below it, in a folder named after its file",
                hint=MAPPED_HINT,
            )


def parse_spec(body: Any) -> TaskSpec:
    """Validate decoded JSON into a :class:`TaskSpec`; raise ConfigError naming the field."""
    fields = _Fields(body, "")
    fields.reject_unknown(_KEYS)
    if body.get("format", FORMAT) != FORMAT:
        raise fields.fail("format", f"must be {FORMAT!r}")
    task_id = fields.string("id")
    if not valid_task_id(task_id):
        raise fields.fail("id", f"{task_id[:80]!r} is not 1-128 letters, digits, '.', '_' or '-'")
    shell = _flag(fields, "shell")
    inputs = tuple(_input(item, f"inputs[{n}]") for n, item in enumerate(fields.items("inputs")))
    outputs = tuple(
        _output(item, f"outputs[{n}]") for n, item in enumerate(fields.items("outputs"))
    )
    bundle = None if body.get("bundle") is None else _bundle(body["bundle"])
    _unique_paths(inputs, bundle)
    _check_template(inputs, outputs)
    if any(item.each for item in inputs) and len(task_id) > MAX_TEMPLATE_ID:
        raise fields.fail("id", f"of a task with an 'each' input is at most {MAX_TEMPLATE_ID} long")
    if any(isinstance(i.source, TaskRef) and i.source.producer == task_id for i in inputs):
        raise ConfigError(
            f"task spec: task {task_id} names its own output as an input", hint=SPEC_HINT
        )
    results = None if body.get("results") is None else fields.url("results")
    return TaskSpec(
        id=task_id,
        command=_command(fields, shell),
        shell=shell,
        env=_env(fields),
        timeout_s=_timeout(fields),
        inputs=inputs,
        outputs=outputs,
        bundle=bundle,
        scratch_bytes=fields.size("scratch_bytes") or 0,
        results=results,
        pass_env=_pass_env(fields),
    )


def split_pair(text: str, what: str) -> tuple[str, str]:
    """Split an inline ``LEFT=RIGHT`` argument (``--in``/``--out``) at its first '='."""
    left, sep, right = text.partition("=")
    if not sep or not left or not right:
        raise ConfigError(f"{what} {text!r} must look like LEFT=RIGHT")
    return left, right


def inline_spec(
    *,
    command: Sequence[str],
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    task_id: str = "task",
    **extra: Any,
) -> TaskSpec:
    """The spec of ``stager wrap --in SRC=PATH --out PATH=DEST -- CMD...``."""
    body: dict[str, Any] = {"id": task_id, "command": list(command), **extra}
    body["inputs"] = [
        dict(zip(("source", "path"), split_pair(text, "--in"), strict=True)) for text in inputs
    ]
    body["outputs"] = [
        dict(zip(("path", "to"), split_pair(text, "--out"), strict=True)) for text in outputs
    ]
    if body.get("shell"):
        body["command"] = " ".join(command)
    return parse_spec({key: value for key, value in body.items() if value is not None})
