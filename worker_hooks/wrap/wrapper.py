"""The job wrapper: stage-in, run, stage-out, then the result manifest, last.

:func:`wrap_task` is what ``stager wrap`` calls. A worker calls
:func:`start_task`, then the :meth:`Ran.finish` it returns, on another
thread: a task's stage-out overlaps the next task's command. The contract
of the two together, as of :func:`wrap_task` (DESIGN.md invariants 2, 5, 7):

- the spec was validated before any I/O (:mod:`worker_hooks.task.spec`), and
  its inputs name S3 objects (a ``task://`` reference is the dispatcher's to
  resolve; one left here is refused before any I/O);
- inputs are resolved first (one HEAD each where the spec gives no digest),
  so the task's key is known before anything runs; a recorded result for
  that key (in S3, or what a dispatcher answers) whose outputs are intact is
  returned without running (memoization; ``force`` re-runs and first
  withdraws the old result);
- inputs are staged through the node cache and stay pinned while the
  command runs in a fresh sandbox; nothing stays pinned afterwards;
- stdout and stderr (when not empty) are uploaded whatever the command did; outputs only if
  it succeeded, and the result manifest only once every output is durable
  (unless the caller records results itself: a worker writes them in segments);
- it returns only on success; every failure raises a
  :class:`~stager.errors.StagerError` whose class gives the exit code;
- the sandbox is removed afterwards (kept on failure with ``keep_failed``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fsd.materialize import Materialize
from fsd.stagein import (
    Peers,
    ResolvedInput,
    StagedInput,
    StageInput,
    resolve_inputs,
    staged_resolved,
)
from stager.digest import Digest
from stager.errors import (
    CommandFailedError,
    ConfigError,
    DiskFullError,
    StagerError,
    TaskCancelledError,
    TaskError,
    TaskTimeoutError,
    from_os_error,
)
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.units import format_size
from worker_hooks.task.key import task_key
from worker_hooks.task.result import FileRecord, ResultManifest
from worker_hooks.task.spec import (
    TaskRef,
    TaskSpec,
    check_collection,
    collection_member,
    glob_base,
)
from worker_hooks.wrap.bundle import ensure_bundle, remove_tree
from worker_hooks.wrap.environment import task_environment
from worker_hooks.wrap.memo import commit, committed_result, intact, log_url, result_url
from worker_hooks.wrap.node import Node
from worker_hooks.wrap.outputs import FoundOutput, find_outputs
from worker_hooks.wrap.runner import RunOutcome, run_command
from worker_hooks.wrap.sandboxes import claim, keep, make_sandbox, record_run
from worker_hooks.wrap.stageout import NodeKeeping, upload_outputs


@dataclass(frozen=True)
class WrapOptions:
    force: bool = False
    keep_failed: bool = False
    live: bool = False
    cancel: threading.Event | None = None  # set it to stop the command (a worker's drain)
    pass_env: tuple[str, ...] = ()  # variables passed to every task (worker_hooks.wrap.environment)
    peers: Peers | None = None  # other nodes holding inputs (a worker with a file service)
    keeping: NodeKeeping | None = None  # what `mirror` and `local` outputs need
    generation: str | None = None  # `<task id>/<attempt>` of a dispatcher's lease
    # Where a task key's recorded result is looked up (a dispatcher) instead of S3; the
    # outputs it lists are checked in S3 all the same.
    recorded: Callable[[str], ResultManifest | None] | None = None
    # False: the caller records the result (a worker, in a segment), not the wrapper.
    commit: bool = True
    # False: no task is known to read this task's outputs (a dispatcher's word), so its
    # `s3` outputs go straight to S3 without a copy in the node cache.
    cache_s3_outputs: bool = True
    # The environment tasks' variables are taken from (see task_environment): this
    # process's, or a copy a worker made once (reading os.environ decodes every variable).
    environ: Mapping[str, str] | None = None


@dataclass(frozen=True)
class WrapResult:
    manifest: ResultManifest
    result_url: S3Url
    memoized: bool
    staged: tuple[StagedInput, ...] = ()  # how each input arrived (none when memoized)


class Ran:
    """A task whose command has ended (or whose result was recorded already).

    :meth:`finish` is its stage-out: it uploads the logs and outputs, records
    the result (unless the caller does) and ends the sandbox; it raises the
    command's failure, if any. It must be called exactly once.
    """

    def __init__(self, finish: Callable[[], WrapResult]) -> None:
        self._finish = finish

    def finish(self) -> WrapResult:
        return self._finish()


@dataclass
class _Timer:
    clock: Callable[[], float] = time.monotonic
    marks: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = self.clock()
        try:
            yield
        finally:
            self.marks[name] = round(self.clock() - started, 6)


def _identity(item: ResolvedInput) -> str:
    """What names an input's bytes: its digest, else the store's ETag and size."""
    if item.digest is not None:
        return str(item.digest)
    etag = item.info.etag if item.info is not None else None
    return f"etag:{etag}:{item.size}" if etag else f"url:{item.url}:{item.size}"


def stage_inputs(spec: TaskSpec, store: ObjectStore) -> list[StageInput]:
    """The spec's inputs as the node cache stages them; a ``task://`` one is refused.

    An S3 collection (a prefix, or a glob over keys) is listed now: each object it
    holds is staged below the input's path, at its key's part after the prefix (or
    the glob's base).
    """
    staged = []
    for item in spec.inputs:
        source = item.source
        if isinstance(source, TaskRef):
            raise ConfigError(
                f"task {spec.id}: input {item.path} names {source}, which only the "
                "dispatcher can resolve",
                hint="submit the task with `stager submit`, or name the S3 object",
            )
        if not item.is_collection:
            staged.append(StageInput(source, item.path, item.digest, item.size))
            continue
        base = source.key if source.is_prefix else glob_base(source.key)
        members = [
            StageInput(url, f"{item.path}/{member}", None, size)
            for url, size, _ in store.list(S3Url(source.bucket, base))
            if (member := _member(source, url))
        ]
        check_collection(spec.id, item, [m.size or 0 for m in members])
        staged.extend(members)
    return staged


def _member(collection: S3Url, url: S3Url) -> str | None:
    """Where an object listed under an S3 collection goes below the input's path.

    "Folder" markers (empty objects whose key ends in '/', as consoles make) are
    not files: skipped.
    """
    if url.key.endswith("/"):
        return None
    if collection.is_prefix:
        return url.key[len(collection.key) :]
    return collection_member(collection.key, url.key)


def _bundle_input(spec: TaskSpec) -> list[StageInput]:
    if spec.bundle is None:
        return []
    b = spec.bundle
    return [StageInput(b.source, "bundle", b.digest, b.size)]


def _check_scratch(spec: TaskSpec, sandbox_dir: Path) -> None:
    if not spec.scratch_bytes:
        return
    stat = os.statvfs(sandbox_dir)
    free = stat.f_bavail * stat.f_frsize
    if free < spec.scratch_bytes:
        raise DiskFullError(
            f"task {spec.id} needs {format_size(spec.scratch_bytes)} of scratch, "
            f"{sandbox_dir} has {format_size(free)} free",
            hint="free space on the scratch disk or run the task on another node",
        )


def _make_sandbox(spec: TaskSpec, node: Node) -> Path:
    try:
        node.sandbox_dir.mkdir(parents=True, exist_ok=True)
        _check_scratch(spec, node.sandbox_dir)
        if node.sandbox_pool is not None:
            return node.sandbox_pool.take()
        root = make_sandbox(node.sandbox_dir, f"{spec.id}.")
        claim(root)
    except OSError as exc:
        raise from_os_error(exc, f"make a sandbox in {node.sandbox_dir}") from exc
    return root


def _end_sandbox(spec: TaskSpec, node: Node, sandbox: Path, *, keep_it: bool) -> None:
    """Remove ``sandbox`` (or give it back to the pool), or keep it for a person."""
    pool = node.sandbox_pool
    if not keep_it:
        if pool is not None:
            pool.give_back(sandbox)
        else:
            remove_tree(sandbox)
    elif pool is not None:
        try:
            pool.keep(sandbox, spec.id)
        except OSError:
            pool.give_back(sandbox)
    else:
        keep(sandbox)


def _argv(spec: TaskSpec) -> list[str]:
    return ["/bin/sh", "-c", spec.command[0]] if spec.shell else list(spec.command)


def _failure(spec: TaskSpec, outcome: RunOutcome) -> TaskError | None:
    """The command's own failure (timeout, signal, non-zero exit), if any."""
    if outcome.timed_out:
        return TaskTimeoutError(
            f"task {spec.id} ran past its timeout of {spec.timeout_s:g} s and was killed"
        )
    if outcome.returncode < 0:
        name = signal.Signals(-outcome.returncode).name
        return CommandFailedError(f"task {spec.id}: the command died of {name}")
    if outcome.returncode > 0:
        return CommandFailedError(
            f"task {spec.id}: the command exited with code {outcome.returncode}"
        )
    return None


class _Run:
    """One attempt at one task on one node."""

    def __init__(self, spec: TaskSpec, node: Node, options: WrapOptions) -> None:
        self.spec = spec
        self.node = node
        self.options = options
        self.timer = _Timer()
        started = datetime.now(UTC)
        self.started_at = started.isoformat(timespec="milliseconds")
        self._links: list[tuple[Path, Digest]] = []  # inputs hard-linked into the sandbox
        # Names this run's logs: every run keeps its own, whichever attempt wins.
        # Not a secret: the time and process keep it apart from other runs' ids already.
        self.run_id = f"{started:%Y%m%dT%H%M%S.%f}-{random.getrandbits(24):06x}"

    def start(self) -> Ran:
        """Resolve, then (unless recorded already) stage in and run, in a sandbox."""
        node = self.node
        with self.timer.phase("resolve"):
            wanted = stage_inputs(self.spec, node.store)
            resolved = resolve_inputs(
                [*wanted, *_bundle_input(self.spec)], store=node.store, workers=node.workers
            )
            inputs, bundle = resolved[: len(wanted)], resolved[len(wanted) :]
            key = task_key(
                self.spec,
                [(str(i.dest), _identity(i)) for i in inputs],
                _identity(bundle[0]) if bundle else None,
            )
            url = result_url(self.spec, key)
            if self.options.force:
                node.store.delete(url)  # no manifest may vouch for outputs we overwrite
            elif (done := self._recorded(key, url)) is not None:
                return Ran(lambda: WrapResult(done, url, memoized=True))
        sandbox = _make_sandbox(self.spec, node)
        try:
            staged, outcome = self._stage_in_and_run(sandbox, inputs)
        except BaseException:
            self._end(sandbox, succeeded=False)
            raise
        stage_out = functools.partial(self._stage_out, sandbox, inputs, staged, outcome, key, url)
        return Ran(functools.partial(self._finish, sandbox, stage_out))

    def _end(self, sandbox: Path, *, succeeded: bool) -> None:
        keep_it = self.options.keep_failed and not succeeded
        if not keep_it:
            self.node.cache.release_links(self._links)  # keeps the entries' seals true
        _end_sandbox(self.spec, self.node, sandbox, keep_it=keep_it)

    def _recorded(self, key: str, url: S3Url) -> ResultManifest | None:
        """The result already recorded for ``key``, if its outputs are intact."""
        if self.options.recorded is None:
            return committed_result(self.node.store, url)
        found = self.options.recorded(key)
        return found if found is not None and intact(self.node.store, found) else None

    def _stage_in_and_run(
        self, sandbox: Path, inputs: Sequence[ResolvedInput]
    ) -> tuple[list[StagedInput], RunOutcome]:
        """Stage the inputs in, pinned while the command runs (not after)."""
        node, spec = self.node, self.spec
        work, logs = sandbox / "work", sandbox / "logs"
        with contextlib.ExitStack() as pins:
            with self.timer.phase("stage_in"):
                if spec.bundle is not None:
                    bundle_dir = ensure_bundle(
                        spec.bundle,
                        bundles_dir=node.bundles_dir,
                        cache=node.cache,
                        store=node.store,
                    )
                    link = work / spec.bundle.path
                    try:
                        link.parent.mkdir(parents=True, exist_ok=True)
                        link.symlink_to(bundle_dir, target_is_directory=True)
                    except OSError as exc:
                        raise from_os_error(exc, f"show the bundle at {link}") from exc
                staged = pins.enter_context(
                    staged_resolved(
                        inputs,
                        work,
                        cache=node.cache,
                        store=node.store,
                        mode=node.materialize,
                        nfs_head=node.nfs_head,
                        peers=self.options.peers,
                        workers=node.workers,
                    )
                )
                self._links = [
                    (s.path, s.digest) for s in staged if s.materialized_as is Materialize.LINK
                ]
            with self.timer.phase("run"):
                outcome = run_command(
                    _argv(spec),
                    cwd=work,
                    env=task_environment(
                        spec,
                        work=work,
                        tmp=sandbox / "tmp",
                        pass_env=self.options.pass_env,
                        source=os.environ if self.options.environ is None else self.options.environ,
                    ),
                    stdout_path=logs / "stdout",
                    stderr_path=logs / "stderr",
                    timeout_s=spec.timeout_s,
                    kill_grace_s=node.kill_grace_s,
                    live=self.options.live,
                    cancel=self.options.cancel,
                    on_start=lambda pid: record_run(sandbox, pid),
                )
        return staged, outcome

    def _finish(self, sandbox: Path, stage_out: Callable[[], WrapResult]) -> WrapResult:
        """The stage-out, then the sandbox ended (kept if it failed and that was asked)."""
        succeeded = False
        try:
            result = stage_out()
            succeeded = True
            return result
        finally:
            self._end(sandbox, succeeded=succeeded)

    def _stage_out(
        self,
        sandbox: Path,
        inputs: Sequence[ResolvedInput],
        staged: Sequence[StagedInput],
        outcome: RunOutcome,
        key: str,
        url: S3Url,
    ) -> WrapResult:
        node, spec = self.node, self.spec
        work, logs = sandbox / "work", sandbox / "logs"
        with self.timer.phase("stage_out"):
            log_records = self._upload_logs(logs, key, outcome)
            outputs = upload_outputs(
                find_outputs(work, spec.outputs),
                cache=node.cache,
                store=node.store,
                task=key,
                replace_own=self.options.force,
                keeping=self.options.keeping,
                generation=self.options.generation,
                workers=node.workers,
                cache_s3=self.options.cache_s3_outputs,
            )
        manifest = ResultManifest(
            task_id=spec.id,
            task_key=key,
            command=spec.command,
            exit_code=outcome.returncode,
            host=socket.gethostname(),
            started_at=self.started_at,
            timings_s=dict(self.timer.marks),
            inputs=tuple(_input_record(i, s) for i, s in zip(inputs, staged, strict=True)),
            outputs=tuple(outputs),
            logs=tuple(log_records),
        )
        if self.options.commit:
            commit(node.store, url, manifest)
        return WrapResult(manifest, url, memoized=False, staged=tuple(staged))

    def _upload_logs(self, logs: Path, key: str, outcome: RunOutcome) -> list[FileRecord]:
        """Upload the non-empty logs (in parallel); raise the command's failure if it failed.

        A cancelled attempt (a drain) uploads nothing: it is handed back, and
        the attempt that completes it leaves the logs.
        """
        if outcome.cancelled:
            raise TaskCancelledError(f"task {self.spec.id} was stopped before it ended")
        failed = _failure(self.spec, outcome)
        items = [
            FoundOutput(logs / name, name, log_url(self.spec, key, self.run_id, name), size)
            for name in ("stdout", "stderr")
            if (size := (logs / name).stat().st_size) > 0
        ]
        try:
            records = upload_outputs(items, cache=None, store=self.node.store, task=key, workers=2)
        except StagerError as exc:
            if failed is not None:
                failed.hint = f"its logs could not be uploaded ({exc.message}); see {logs}"
                raise failed from exc
            raise
        if failed is not None:
            stderr = [r.url for r in records if r.path == "stderr"]
            failed.hint = f"see its stderr log {stderr[0]}" if stderr else "its stderr was empty"
            failed.logs = tuple(r.url for r in records)
            raise failed
        return records


def _input_record(item: ResolvedInput, staged: StagedInput) -> FileRecord:
    return FileRecord(str(item.dest), item.url, staged.digest, staged.size)


def start_task(spec: TaskSpec, node: Node, options: WrapOptions | None = None) -> Ran:
    """Resolve ``spec`` and, unless its result is recorded already, stage in and run it
    on ``node``; the stage-out is the returned :meth:`Ran.finish`. Every failure up to
    the command's end raises here (the sandbox ended); the command's own, in ``finish``."""
    return _Run(spec, node, options or WrapOptions()).start()


def wrap_task(spec: TaskSpec, node: Node, options: WrapOptions | None = None) -> WrapResult:
    """Run ``spec`` on ``node`` end to end; see the module docstring for the contract."""
    return start_task(spec, node, options).finish()
