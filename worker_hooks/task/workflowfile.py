"""A large JSON workflow file, read a task at a time instead of whole.

``stager submit`` of a workflow of 100,000 tasks would otherwise hold the
decoded file and every parsed task at once (about 3 KiB a task). Here the
file is read with ijson, an incremental JSON parser, in passes:

1. the top level: its keys, ``name`` and ``defaults`` (``tasks`` is skipped);
2. the ids, for ``task://`` globs over them;
3. every task parsed and checked as :func:`~worker_hooks.task.workflow.workflow_tasks`
   does, of which only an *outline* is kept: the id, the ``task://`` and
   ``each`` inputs and the outputs. The workflow is then checked on the
   outlines as a whole (:func:`~worker_hooks.task.workflow.check_batch`:
   ids, references, cycles) and put in submit order, so a mistake anywhere
   in the file is found before anything is sent;
4. the tasks again, yielded in parts in that order.

A file that lists each task after the tasks it reads from (the usual way a
workflow is written or generated) is sent in its own order, and pass 4 holds
one part at a time. A task that comes before a task it reads from waits in
memory until that one is read. A file that changes between the passes is
refused with a one-line error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, BinaryIO

import ijson

from stager.errors import ConfigError
from worker_hooks.task.spec import GLOB_CHARACTERS, TaskRef, TaskSpec
from worker_hooks.task.workflow import (
    HINT,
    check_batch,
    checked_header,
    named_producers,
    submit_order,
    task_ids,
    task_spec,
)

STREAM_FROM_BYTES = 16 * 1024 * 1024  # smaller files are read whole: faster, and light enough


@dataclass(frozen=True)
class WorkflowFile:
    """A workflow file checked as a whole, whose tasks are read again to be sent."""

    path: Path
    name: str
    defaults: Mapping[str, Any]  # as decoded: merged under each task as it is read again
    ids: tuple[str, ...]  # in the file's order
    order: tuple[str, ...]  # the order to send them in
    items: str  # the ijson prefix of the tasks

    def __len__(self) -> int:
        return len(self.ids)

    def parts(self, tasks: int) -> Iterator[list[TaskSpec]]:
        """The tasks in submit order, ``tasks`` to a part."""
        waiting: dict[str, TaskSpec] = {}  # read before their turn
        next_up = 0
        part: list[TaskSpec] = []
        for number, raw in enumerate(self._tasks()):
            spec = task_spec(raw, number, self.defaults, self.ids, str(self.path))
            if number >= len(self.ids) or spec.id != self.ids[number]:
                raise ConfigError(f"{self.path} changed while it was being submitted")
            waiting[spec.id] = spec
            while next_up < len(self.order) and self.order[next_up] in waiting:
                part.append(waiting.pop(self.order[next_up]))
                next_up += 1
                if len(part) == tasks:
                    yield part
                    part = []
        if next_up < len(self.order):
            raise ConfigError(f"{self.path} changed while it was being submitted")
        if part:
            yield part

    def _tasks(self) -> Iterator[Any]:
        with _opened(self.path) as handle:
            yield from _decoded(self.path, ijson.items(handle, self.items, use_float=True))


def streamed(path: Path) -> bool:
    """Whether ``path`` is read here rather than whole: JSON of at least
    :data:`STREAM_FROM_BYTES` (YAML has no incremental parser)."""
    if path.suffix in (".yaml", ".yml"):
        return False
    try:
        return path.stat().st_size >= STREAM_FROM_BYTES
    except OSError:
        return False  # reading it whole says why it cannot be read


def read_workflow_file(path: Path) -> WorkflowFile:
    """Check the JSON workflow in ``path`` as a whole, holding an outline of each task
    (passes 1-3 above); the workflow is named after the file unless it names itself."""
    where = str(path)
    items, keys, name, defaults = _top_level(path)
    defaults = checked_header(keys, defaults, where)
    ids: list[str] = []
    named: set[str] = set()  # producer ids and globs
    with _opened(path) as handle:
        for raw in _decoded(path, ijson.items(handle, items, use_float=True)):
            ids += task_ids([raw])
            named.update(named_producers(raw, defaults))
    globs = [pattern for pattern in named if GLOB_CHARACTERS & set(pattern)]
    producers = {i for i in ids if i in named or any(fnmatchcase(i, g) for g in globs)}
    outlines = []
    with _opened(path) as handle:
        for number, raw in enumerate(_decoded(path, ijson.items(handle, items, use_float=True))):
            spec = task_spec(raw, number, defaults, ids, where)
            outlines.append(_outline(spec, producer=spec.id in producers))
    if len(outlines) != len(ids):  # a task with no id: parsing it said so already
        raise ConfigError(f"{path} changed while it was being read")
    check_batch(outlines)
    order = tuple(spec.id for spec in submit_order(outlines))
    return WorkflowFile(
        path=path,
        name=str(name) if name else path.stem,
        defaults=defaults,
        ids=tuple(ids),
        order=order,
        items=items,
    )


def _outline(spec: TaskSpec, *, producer: bool) -> TaskSpec:
    """What checking and ordering a workflow read of a task: its id, the inputs that
    name other tasks or make it a template, and, if others read from it, its outputs."""
    return TaskSpec(
        id=spec.id,
        command=(),
        inputs=tuple(i for i in spec.inputs if isinstance(i.source, TaskRef) or i.each),
        outputs=spec.outputs if producer else (),
    )


def _top_level(path: Path) -> tuple[str, list[str], Any, Any]:
    """Where the tasks are (``tasks.item``, or ``item`` for a list of tasks), the
    top-level keys, ``name`` and ``defaults``; the tasks themselves are skipped."""
    keys: list[str] = []
    found: dict[str, Any] = {}
    with _opened(path) as handle:
        events = _decoded(path, ijson.parse(handle, use_float=True))
        for _, event, _ in events:
            if event == "start_array":
                return "item", [], None, None
            if event != "start_map":
                break
            for prefix, event, value in events:
                if prefix == "" and event == "map_key":
                    keys.append(value)
                    if value in ("name", "defaults"):
                        found[value] = _value(events)
                    elif value == "tasks" and next(events, (None, None, None))[1] != "start_array":
                        keys.remove("tasks")  # not a list: refused below
            break
    if "tasks" not in keys:
        raise ConfigError(
            f"{path}: expected a workflow (an object with a 'tasks' list) or a list of task specs",
            hint=HINT,
        )
    return "tasks.item", keys, found.get("name"), found.get("defaults")


def _value(events: Iterator[tuple[str, str, Any]]) -> Any:
    """The value whose events come next, built whole (it is small: a name, defaults)."""
    builder = ijson.ObjectBuilder()
    depth = 0
    for _, event, value in events:
        builder.event(event, value)
        depth += event in ("start_map", "start_array")
        depth -= event in ("end_map", "end_array")
        if depth == 0:
            break
    return builder.value


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[BinaryIO]:
    """``path`` opened for reading, a failure to open it one line."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with handle:
        yield handle


def _decoded(path: Path, values: Iterator[Any]) -> Iterator[Any]:
    """``values`` as ijson decodes them, a syntax error refused as the whole file's would be."""
    try:
        yield from values
    except ijson.JSONError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
