"""Workflows: task specs whose inputs may name other tasks' outputs.

An input ``source`` of the form ``task://<producer id>/<sandbox path>``
names the file the producer declared at that path. A task with such inputs
is ready once every producer has committed; its references are then
replaced by the producer's recorded location, digest and size
(:meth:`~worker_hooks.task.spec.TaskSpec.resolved`), so the worker stages
them like any input.

A workflow file (JSON, or YAML by extension; docs/workflows.md) is::

    {"name": "run1", "defaults": {...spec fields...}, "tasks": [{...spec...}, ...]}

``defaults`` are merged under each task (a task's own fields win; ``env``
is merged key by key).
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from stager.errors import ConfigError
from worker_hooks.task.documents import load_document
from worker_hooks.task.mapping import as_producer, is_member_id
from worker_hooks.task.parse import did_you_mean, parse_spec
from worker_hooks.task.spec import (
    GLOB_CHARACTERS,
    MAX_COLLECTION_COUNT,
    TASK_SCHEME,
    OutputKind,
    OutputSpec,
    TaskRef,
    TaskSpec,
    collection_member,
    glob_base,
    is_collection_path,
)

HINT = "fix the workflow; its format is in docs/workflows.md"
WORKFLOW_KEYS = frozenset({"name", "defaults", "tasks"})


def check_batch(
    specs: Sequence[TaskSpec],
    known: Callable[[Sequence[str]], Mapping[str, TaskSpec]] = lambda ids: {},
) -> None:
    """Check every task, unique ids, and dependencies on known or listed tasks.

    A dependency must name a task in this batch or one of its workflow already
    submitted (``known`` returns the specs of those of the ids it is given that are),
    and a file that task declares among its outputs; a cycle within the
    batch is refused.
    """
    ids = [spec.id for spec in specs]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise ConfigError(f"task id {duplicates[0]} is used twice in the workflow", hint=HINT)
    templates = [spec.id for spec in specs if spec.mapped]
    taken = sorted(i for i in ids for t in templates if is_member_id(i, t))
    if taken:
        raise ConfigError(
            f"task id {taken[0]} is of the form the runs of a task with an 'each' input take",
            hint="rename the task: ids <id>.<n> belong to the runs of task <id>",
        )
    producers = {spec.id: spec for spec in specs}
    producers = {**known(sorted({p for s in specs for p in s.producers} - set(ids))), **producers}
    producers = {task_id: as_producer(spec) for task_id, spec in producers.items()}
    for spec in specs:
        for number, item in enumerate(spec.inputs):
            if isinstance(item.source, TaskRef):
                _check_reference(spec.id, number, item.source, producers)
    in_batch = set(ids)  # once: a set per task made a batch quadratic
    _refuse_cycles({spec.id: spec.producers & in_batch for spec in specs})


def submit_order(specs: Sequence[TaskSpec]) -> list[TaskSpec]:
    """``specs`` with each task after the tasks of the batch it reads from, otherwise in
    their order: the order in which a batch can be sent in parts. A cycle is refused."""
    by_id = {spec.id: spec for spec in specs}
    _refuse_cycles({spec.id: spec.producers & by_id.keys() for spec in specs})
    placed: set[str] = set()
    ordered = []
    for spec in specs:
        stack = [spec.id]  # an explicit stack: a chain may be longer than Python's recursion
        while stack:
            task = stack[-1]
            waiting = [p for p in sorted(by_id[task].producers) if p in by_id and p not in placed]
            if waiting:
                stack.extend(reversed(waiting))
                continue
            stack.pop()
            if task not in placed:
                placed.add(task)
                ordered.append(by_id[task])
    return ordered


def _check_reference(
    task: str, number: int, ref: TaskRef, producers: Mapping[str, TaskSpec]
) -> None:
    producer = producers.get(ref.producer)
    if producer is None:
        raise ConfigError(
            f"task {task}: inputs[{number}] names unknown task {ref.producer} ({ref})",
            hint="submit its producer in the same workflow (task ids are per workflow)",
        )
    if not any(_declares(output, ref) for output in producer.outputs):
        declared = ", ".join(output.path for output in producer.outputs) or "none"
        raise ConfigError(
            f"task {task}: inputs[{number}] names {ref}, which task {ref.producer} does not "
            f"declare (its outputs: {declared})",
            hint="name a file the producer declares among its outputs",
        )


def _declares(output: OutputSpec, ref: TaskRef) -> bool:
    """Whether ``output`` declares the file ``ref`` names, or (for a collection) may
    record files in it."""
    if not ref.is_collection:
        return output.provides(ref.path)
    if output.kind is OutputKind.FILE:
        return collection_member(ref.path, output.path) is not None
    ours = output.path if output.kind is OutputKind.DIR else glob_base(output.path)
    theirs = ref.path if ref.path.endswith("/") else glob_base(ref.path)
    return ours.startswith(theirs) or theirs.startswith(ours)


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
                raise ConfigError(
                    f"the workflow has a dependency cycle through task {node}", hint=HINT
                )
            on_path.add(node)
            path.append(node)
            stack.append((node, True))
            stack.extend((producer, False) for producer in edges.get(node, ()))


def workflow_tasks(document: Any, where: str) -> tuple[str | None, list[TaskSpec]]:
    """The workflow's name (if it gives one) and its checked tasks, defaults merged in.

    ``document`` holds a workflow (an object with ``tasks``), a list of task
    specs or one task spec; errors name ``where`` (the file).
    """
    if isinstance(document, list):
        document = {"tasks": document}
    elif isinstance(document, dict) and "tasks" not in document and "id" in document:
        document = {"tasks": [document]}
    if not isinstance(document, dict) or not isinstance(document.get("tasks"), list):
        raise ConfigError(
            f"{where}: expected a workflow (an object with a 'tasks' list), a list of task "
            "specs or one task spec",
            hint="see docs/workflows.md",
        )
    defaults = checked_header(document.keys(), document.get("defaults"), where)
    ids = task_ids(document["tasks"])
    specs = [
        task_spec(task, number, defaults, ids, where)
        for number, task in enumerate(document["tasks"])
    ]
    name = document.get("name")
    return (str(name) if name else None), specs


def checked_header(keys: Iterable[Any], defaults: Any, where: str) -> dict[str, Any]:
    """The workflow's ``defaults`` (empty if none), once its top-level keys are known ones."""
    unknown = sorted(str(key) for key in keys if key not in WORKFLOW_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], WORKFLOW_KEYS)}",
            hint=f"a workflow has {', '.join(sorted(WORKFLOW_KEYS))}; see docs/workflows.md",
        )
    defaults = defaults or {}
    if not isinstance(defaults, dict) or not isinstance(defaults.get("env") or {}, dict):
        raise ConfigError(f"{where}: 'defaults' must be an object (and its env too)", hint=HINT)
    return defaults


def task_ids(tasks: Iterable[Any]) -> list[str]:
    """The ids the tasks give (for ``task://`` globs over them)."""
    return [t["id"] for t in tasks if isinstance(t, dict) and isinstance(t.get("id"), str)]


def task_spec(
    task: Any, number: int, defaults: Mapping[str, Any], ids: Sequence[str], where: str
) -> TaskSpec:
    """Task ``number`` of a workflow: ``defaults`` merged in, globs over ``ids`` expanded."""
    if not isinstance(task, dict) or not isinstance(task.get("env") or {}, dict):
        raise ConfigError(f"{where}: task {number} must be an object (and its env too)", hint=HINT)
    merged = {**defaults, **task}
    if isinstance(merged.get("inputs"), list):
        merged["inputs"] = _expand_producers(merged["inputs"], ids, merged.get("id"), where)
    env = {**(defaults.get("env") or {}), **(task.get("env") or {})}
    if env:
        merged["env"] = env
    return parse_spec(merged)


def _expand_producers(inputs: list[Any], ids: Sequence[str], task: Any, where: str) -> list[Any]:
    """``task://map-*/part.txt`` (a glob over task ids): one input per task of the
    workflow whose id matches, each below the input's path in a folder named after it."""
    expanded: list[Any] = []
    for item in inputs:
        source = item.get("source") if isinstance(item, dict) else None
        reference = _reference(source)
        if reference is None or not GLOB_CHARACTERS & set(reference[0]):
            expanded.append(item)
            continue
        pattern, rest = reference
        matched = [i for i in ids if fnmatch.fnmatchcase(i, pattern) and i != task]
        limit = item.get("max_count", MAX_COLLECTION_COUNT)
        if not matched or (isinstance(limit, int) and len(matched) > limit):
            found = f"{len(matched)} tasks" if matched else "no task"
            raise ConfigError(
                f"{where}: task {task}: {source} matches {found} of the workflow"
                + (f", more than its max_count {limit}" if matched else ""),
                hint=HINT,
            )
        base = str(item.get("path", "")).rstrip("/")
        for producer in matched:
            below = producer if is_collection_path(rest) else f"{producer}/{rest}"
            expanded.append(
                {**item, "source": f"{TASK_SCHEME}{producer}/{rest}", "path": f"{base}/{below}"}
            )
    return expanded


def _reference(source: Any) -> tuple[str, str] | None:
    """(producer id or glob, path) of a ``task://`` source as written; None if it is not one."""
    if not isinstance(source, str) or not source.startswith(TASK_SCHEME):
        return None
    producer, _, path = source[len(TASK_SCHEME) :].partition("/")
    return producer, path


def named_producers(task: Any, defaults: Mapping[str, Any]) -> Iterator[str]:
    """The producer ids and id globs that a task's inputs (as written, or the defaults'
    if it has none) name."""
    inputs = task.get("inputs", defaults.get("inputs")) if isinstance(task, dict) else None
    for item in inputs if isinstance(inputs, list) else ():
        reference = _reference(item.get("source") if isinstance(item, dict) else None)
        if reference is not None:
            yield reference[0]


def load_workflow(path: Path) -> tuple[str, list[TaskSpec]]:
    """The workflow in ``path`` (named after the file unless it names itself)."""
    name, specs = workflow_tasks(load_document(path), str(path))
    return name or path.stem, specs
