"""Workflows: task specs whose inputs may name other tasks' outputs.

An input ``source`` of the form ``task://<producer id>/<sandbox path>``
names the file the producer declared at that path. A task with such inputs
is ready once every producer has committed; its references are then
replaced by the producer's recorded location, digest and size
(:func:`resolve_references`), so the worker stages them like any input.

A workflow file (JSON, or YAML by extension; docs/workflows.md) is::

    {"name": "run1", "defaults": {...spec fields...}, "tasks": [{...spec...}, ...]}

``defaults`` are merged under each task (a task's own fields win; ``env``
is merged key by key).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stager.errors import ConfigError, StagerError
from stager.locations import safe_relative_path
from worker_hooks.results import ResultManifest
from worker_hooks.taskspec import TaskSpec, load_document, parse_spec

TASK_SCHEME = "task://"
_PLACEHOLDER_BUCKET = "stager-task-ref"


@dataclass(frozen=True)
class TaskRef:
    producer: str
    path: str


def parse_ref(source: str) -> TaskRef | None:
    """The reference in ``source``, None if it is not a ``task://`` URL."""
    if not source.startswith(TASK_SCHEME):
        return None
    producer, _, path = source[len(TASK_SCHEME) :].partition("/")
    if not producer or not path:
        raise ConfigError(f"task reference {source!r} must look like task://<task id>/<path>")
    return TaskRef(producer, str(safe_relative_path(path, what=f"path in {source!r}")))


@dataclass(frozen=True)
class Submission:
    """A checked task body, with the producers it waits for."""

    body: dict[str, Any]
    spec: TaskSpec
    producers: frozenset[str]


def check_task(body: Any) -> Submission:
    """Validate a task body whose inputs may hold ``task://`` references."""
    if not isinstance(body, dict):
        raise ConfigError("task spec: the spec must be an object")
    producers: set[str] = set()
    stand_in = copy.deepcopy(body)
    inputs = stand_in.get("inputs")
    for item in inputs if isinstance(inputs, list) else []:
        source = item.get("source") if isinstance(item, dict) else None
        ref = parse_ref(source) if isinstance(source, str) else None
        if ref is not None:
            producers.add(ref.producer)
            item["source"] = f"s3://{_PLACEHOLDER_BUCKET}/{ref.producer}/{ref.path}"
    spec = parse_spec(stand_in)
    if spec.id in producers:
        raise ConfigError(f"task {spec.id} names its own output as an input")
    return Submission(body, spec, frozenset(producers))


def check_batch(
    bodies: Sequence[Any], known: Callable[[Sequence[str]], set[str]] = lambda ids: set()
) -> list[Submission]:
    """Check every task, unique ids, and dependencies on known or listed tasks.

    A dependency must name a task in this batch or one already submitted
    (``known`` returns which of the ids it is given are); a cycle within the
    batch is refused.
    """
    checked = [check_task(body) for body in bodies]
    ids = [s.spec.id for s in checked]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise ConfigError(f"task id {duplicates[0]} is used twice in the workflow")
    in_batch = set(ids)
    known_ids = known(sorted({p for s in checked for p in s.producers} - in_batch))
    for sub in checked:
        unknown = sorted(sub.producers - in_batch - known_ids)
        if unknown:
            raise ConfigError(f"task {sub.spec.id} depends on unknown task {unknown[0]}")
    _refuse_cycles({s.spec.id: s.producers & in_batch for s in checked})
    return checked


def _refuse_cycles(edges: Mapping[str, frozenset[str]]) -> None:
    done: set[str] = set()
    for start in edges:
        path: list[str] = []
        stack: list[tuple[str, bool]] = [(start, False)]
        on_path: set[str] = set()
        while stack:
            node, leaving = stack.pop()
            if leaving:
                on_path.discard(node)
                path.pop()
                done.add(node)
                continue
            if node in done:
                continue
            if node in on_path:
                raise ConfigError(f"the workflow has a dependency cycle through task {node}")
            on_path.add(node)
            path.append(node)
            stack.append((node, True))
            stack.extend((producer, False) for producer in edges.get(node, ()))


def resolve_references(
    body: dict[str, Any], producer: str, result: ResultManifest
) -> dict[str, Any]:
    """``body`` with its references to ``producer`` replaced by the recorded outputs."""
    outputs = {record.path: record for record in result.outputs}
    resolved = copy.deepcopy(body)
    for item in resolved.get("inputs", []):
        ref = parse_ref(item["source"])
        if ref is None or ref.producer != producer:
            continue
        record = outputs.get(ref.path)
        if record is None:
            raise StagerError(
                f"task {producer} recorded no output {ref.path} (it has: "
                f"{', '.join(sorted(outputs)) or 'none'})",
                hint="make the input name a file the producer declares",
            )
        item.update(source=record.url, digest=record.digest, size=record.size)
    return resolved


def load_workflow(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """The workflow's name and its task bodies, with defaults merged in.

    The file holds a workflow (an object with ``tasks``), a list of task
    specs, or one task spec.
    """
    document = load_document(path)
    if isinstance(document, list):
        document = {"tasks": document}
    elif isinstance(document, dict) and "tasks" not in document and "id" in document:
        document = {"tasks": [document]}
    if not isinstance(document, dict) or not isinstance(document.get("tasks"), list):
        raise ConfigError(
            f"{path}: expected a workflow (an object with a 'tasks' list), a list of task "
            "specs or one task spec",
            hint="see docs/workflows.md",
        )
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: 'defaults' must be an object")
    name = str(document.get("name") or path.stem)
    tasks = []
    for task in document["tasks"]:
        if not isinstance(task, dict):
            raise ConfigError(f"{path}: every task must be an object")
        env = {**(defaults.get("env") or {}), **(task.get("env") or {})}
        merged = {**defaults, **task}
        if env:
            merged["env"] = env
        tasks.append(merged)
    return name, tasks
