"""The wire protocol between ``stager submit``, the dispatcher and its workers.

Every request and answer is one of the frozen messages below, sent as JSON.
``to_json`` and ``from_json`` are each message's two directions; reading
checks every field's type (a task spec through
:func:`~worker_hooks.task.spec.parse_spec`, a result through
:class:`~worker_hooks.task.result.ResultManifest`) and raises
:class:`ProtocolError` naming the field, so nothing untyped passes the HTTP
handler or the client. Every request carries ``Stager-Protocol: <version>``;
the dispatcher refuses another version with a 400 naming both. The HTTP
routes are in docs/dispatcher.md.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Self

from stager.digest import Digest
from stager.errors import ProtocolError, StagerError
from stager.locations import S3Url
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.result import Persist, ResultManifest
from worker_hooks.task.spec import TaskSpec

PROTOCOL_VERSION = 1
VERSION_HEADER = "Stager-Protocol"


class TaskState(enum.Enum):
    WAITING = "waiting"
    QUEUED = "queued"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)


def check_version(header: str | None) -> None:
    """Refuse a request (or an answer) of another protocol version."""
    if header != str(PROTOCOL_VERSION):
        theirs = f"protocol {header[:20]!r}" if header else "no protocol version"
        raise ProtocolError(f"the other side speaks {theirs}; this one speaks {PROTOCOL_VERSION}")


class Message:
    """A message's JSON form, derived from its dataclass fields."""

    def to_json(self) -> bytes:
        return json.dumps(_encode(self)).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"{cls.__name__}: the body is not JSON") from exc
        decoded: Self = _decode(cls, body, cls.__name__)
        return decoded


# -- submitting and following ------------------------------------------------------


@dataclass(frozen=True)
class SubmitRequest(Message):
    workflow: str
    tasks: tuple[TaskSpec, ...]


@dataclass(frozen=True)
class SubmitReply(Message):
    submitted: tuple[str, ...]  # new tasks
    again: tuple[str, ...] = ()  # known ones that run again (changed, failed, or downstream)
    kept: tuple[str, ...] = ()  # known ones kept as they are (unchanged)


@dataclass(frozen=True)
class StateReply(Message):
    state: TaskState


@dataclass(frozen=True)
class TaskInfo(Message):
    id: str
    workflow: str
    state: TaskState
    attempt: int
    failures: int
    worker: str | None
    error: str | None
    result: ResultManifest | None
    reruns: int = 0  # times recovery ran it again after a node took its outputs
    memoized: bool = False  # its result was found, not made (same command, same inputs)
    attempts: tuple[AttemptInfo, ...] = ()


@dataclass(frozen=True)
class AttemptInfo:
    """One lease of a task: where it ran, how it ended, where its command's logs went."""

    attempt: int
    worker: str
    started_at: float
    ended_at: float | None = None
    outcome: str | None = None  # done, failed, expired, lost, handed back, withdrawn
    error: str | None = None
    logs: tuple[S3Url, ...] = ()


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    alive: bool
    last_seen_s_ago: float
    running: int
    cache_bytes: int
    cached_digests: int
    address: str | None = None  # its node file service, if it runs one
    lost: bool = False  # found lost (silent past its lease, or `stager recover`)


@dataclass(frozen=True)
class NodeOnly:
    """A workflow's outputs that are on nodes but not (yet) in S3."""

    workflow: str
    outputs: int
    bytes: int


BRIEF_LIMIT = 100


@dataclass(frozen=True)
class TaskBrief:
    """One task in a workflow's status: where it runs (and for how long), or why it failed."""

    id: str
    attempt: int
    worker: str | None
    age_s: float  # since its lease began (running) or since it failed
    error: str | None = None


@dataclass(frozen=True)
class StatusReply(Message):
    policy: str
    counts: dict[str, int]
    workers: tuple[WorkerInfo, ...]
    bytes_from_s3: int
    bytes_from_cache: int  # node caches, NFS head and peers
    cache_hit_rate: float | None
    tasks_per_s_last_minute: float
    tasks_per_s_overall: float | None
    node_only: tuple[NodeOnly, ...] = ()
    bytes_from_peers: int = 0
    bytes_written_behind: int = 0
    # With a workflow named: its running tasks (oldest lease first) and failed ones
    # (first failure first), up to BRIEF_LIMIT of each.
    running: tuple[TaskBrief, ...] = ()
    failed: tuple[TaskBrief, ...] = ()
    memo_hits: int = 0  # tasks done by finding their result, not running them
    span_s: float | None = None  # from the first submission to the last task's end

    def count(self, state: TaskState) -> int:
        return self.counts.get(state.value, 0)


@dataclass(frozen=True)
class TaskTimeline:
    """One task in a run report: its attempts and where its input bytes came from."""

    id: str
    state: TaskState
    bytes_from_s3: int
    bytes_from_cache: int  # node caches, NFS head and peers
    bytes_from_peers: int
    memoized: bool
    attempts: tuple[AttemptInfo, ...]
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # resolve, stage_in, run, stage_out


@dataclass(frozen=True)
class WorkflowReport(Message):
    """Everything a run report of one workflow draws."""

    workflow: str
    tasks: tuple[TaskTimeline, ...]


@dataclass(frozen=True)
class Assignment:
    task: str
    attempt: int
    worker: str


@dataclass(frozen=True)
class AssignmentsReply(Message):
    assignments: tuple[Assignment, ...]


# -- a worker's side -----------------------------------------------------------------


@dataclass(frozen=True)
class CacheReport:
    """What a worker's cache gained and lost (or, with ``full``, all it holds)."""

    full: bool = False
    added: tuple[Digest, ...] = ()
    removed: tuple[Digest, ...] = ()


@dataclass(frozen=True)
class LeaseRequest(Message):
    worker: str
    max_tasks: int = 1
    wait_s: float = 0.0
    cache: CacheReport | None = None
    address: str | None = None  # HOST:PORT of the worker's node file service
    held: tuple[Held, ...] = ()  # leases it holds, extended as by a heartbeat


@dataclass(frozen=True)
class Replica:
    """Other nodes whose file services hold ``digest`` (from the replica catalog)."""

    digest: Digest
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Lease:
    task_id: str
    attempt: int
    spec: TaskSpec
    expires_at: float
    peers: tuple[Replica, ...] = ()  # where the task's inputs are on other nodes
    mirror_to: tuple[str, ...] = ()  # live peers to mirror outputs to, best first
    # The task's key, when the spec alone gives it, and the result the dispatcher holds
    # for it (None: none, so the node need not look for one).
    memo_key: str | None = None
    memo: ResultManifest | None = None
    # Whether a task the dispatcher knows reads this task's outputs (then the node keeps
    # a copy in its cache); True where it cannot tell.
    outputs_read: bool = True


@dataclass(frozen=True)
class LeaseReply(Message):
    leases: tuple[Lease, ...]
    lease_s: float
    drop: tuple[str, ...] = ()  # of the leases held, those no longer the worker's
    beat_now: bool = False  # the worker was taken as lost: its next heartbeat must come now


@dataclass(frozen=True)
class Held:
    task_id: str
    attempt: int


@dataclass(frozen=True)
class Written:
    """An output a node wrote behind: S3 now holds ``digest`` at ``url``."""

    digest: Digest
    url: S3Url


@dataclass(frozen=True)
class HeartbeatRequest(Message):
    worker: str
    held: tuple[Held, ...] = ()
    cache_bytes: int | None = None
    cache: CacheReport | None = None
    bad_peers: tuple[str, ...] = ()  # addresses that failed this worker lately
    written: tuple[Written, ...] = ()


@dataclass(frozen=True)
class HeartbeatReply(Message):
    drop: tuple[str, ...]
    # The dispatcher had taken this node as lost: send a full cache report, and drop the
    # writes behind still owed (recovery made other plans for those outputs).
    report_all: bool = False


@dataclass(frozen=True)
class InputUse:
    """How one input reached a task: for the replica catalog and the hit rate."""

    digest: Digest
    size: int
    from_cache: bool
    from_peer: bool = False  # fetched from another node's cache (counts as from a cache)


@dataclass(frozen=True)
class CompleteRequest(Message):
    worker: str
    attempt: int
    result: ResultManifest
    uses: tuple[InputUse, ...] = ()
    memoized: bool = False


@dataclass(frozen=True)
class Completion:
    """One task's completion, as a batch of them carries it."""

    task_id: str
    attempt: int
    result: ResultManifest
    uses: tuple[InputUse, ...] = ()
    memoized: bool = False
    # Whether its node's cache took its `s3` outputs (False: the small ones went straight
    # to S3; a large one it took anyway reaches the dispatcher with the next heartbeat).
    cached_outputs: bool = True

    def held(self) -> set[Digest]:
        """What the node's cache holds after this task: its inputs and the outputs it took
        (`mirror` and `local` ones always)."""
        outputs = self.result.outputs
        kept = {r.digest for r in outputs if self.cached_outputs or r.kept is not Persist.S3}
        return {use.digest for use in self.uses} | kept


@dataclass(frozen=True)
class CompletionsRequest(Message):
    """Completions of one worker's tasks, accepted or refused each on its own."""

    worker: str
    completions: tuple[Completion, ...]
    held: tuple[Held, ...] = ()  # leases it holds, extended as by a heartbeat
    want: int = 0  # tasks to lease in the same round trip (the slots these free), no waiting


@dataclass(frozen=True)
class CompletionsReply(Message):
    # Refused, each for its own attempt (not the live lease, or the task is gone);
    # every other completion of the batch was accepted.
    stale: tuple[str, ...]
    drop: tuple[str, ...] = ()  # of the leases held, those no longer the worker's
    beat_now: bool = False  # the worker was taken as lost: its next heartbeat must come now
    leases: tuple[Lease, ...] = ()  # up to ``want`` new leases, as a lease request's


@dataclass(frozen=True)
class MemoRequest(Message):
    """Which of these task keys have a recorded result (asked by a node that learned a
    key only after resolving the inputs)."""

    keys: tuple[str, ...]


@dataclass(frozen=True)
class MemoReply(Message):
    results: tuple[ResultManifest, ...]  # those known, in no order


@dataclass(frozen=True)
class FailRequest(Message):
    worker: str
    attempt: int
    error: str
    retry: bool = False
    bad_peers: tuple[str, ...] = ()  # peers that failed this attempt (suspect at once)
    logs: tuple[S3Url, ...] = ()  # where the command's stdout and stderr went


@dataclass(frozen=True)
class ReleaseRequest(Message):
    worker: str
    attempt: int


@dataclass(frozen=True)
class RecoverRequest(Message):
    dry_run: bool = False


@dataclass(frozen=True)
class RetryRequest(Message):
    """Run a workflow's failed (and, unless ``only_failed``, cancelled) tasks again."""

    only_failed: bool = False
    tasks: tuple[str, ...] = ()  # only these (of the failed ones); none: all of them


@dataclass(frozen=True)
class RecoveryReport(Message):
    """What recovering from a lost node did (or, with ``dry_run``, would do)."""

    worker: str
    dry_run: bool
    outputs_safe: int  # another node holds them
    outputs_from_mirror: int  # a surviving mirror holds them and writes them behind
    outputs_dropped: int  # lost, and nothing needs them any more
    recomputed: tuple[str, ...]  # producers that run again
    reset: tuple[str, ...]  # pending dependants that wait for them again
    requeued: tuple[str, ...]  # tasks the node held a lease on


@dataclass(frozen=True)
class ErrorReply(Message):
    error: str


# -- the codec -----------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if isinstance(value, TaskSpec | ResultManifest):
        return value.to_json()
    if isinstance(value, Digest | S3Url):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_encode(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _encode(item) for key, item in value.items()}
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fail(where: str, problem: str) -> ProtocolError:
    return ProtocolError(f"malformed message: {where} {problem}")


def _decode(kind: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is types.UnionType or origin is typing.Union:
        options = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if value is None and len(options) < len(typing.get_args(kind)):
            return None
        return _decode(options[0], value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise _fail(where, "must be a list")
        item_kind = typing.get_args(kind)[0]
        return tuple(_decode(item_kind, item, f"{where}[{n}]") for n, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, "must be an object")
        item_kind = typing.get_args(kind)[1]
        return {str(k): _decode(item_kind, v, f"{where}.{k}") for k, v in value.items()}
    return _decode_leaf(kind, value, where)


def _decode_leaf(kind: Any, value: Any, where: str) -> Any:
    if kind is bool or kind is str:
        if not isinstance(value, kind):
            raise _fail(where, f"must be a {kind.__name__}")
        return value
    if kind is int or kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(where, "must be a number")
        if kind is int and not isinstance(value, int):
            raise _fail(where, "must be a whole number")
        return kind(value)
    try:
        if kind in (Digest, S3Url):
            if not isinstance(value, str):
                raise _fail(where, "must be a string")
            return kind.parse(value)
        if kind is TaskSpec:
            return parse_spec(value)
        if kind is ResultManifest:
            return ResultManifest.from_json(value)
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            return kind(value)
    except (StagerError, ValueError) as exc:
        reason = exc.message if isinstance(exc, StagerError) else str(exc)
        raise _fail(where, f"is invalid: {reason}") from exc
    if dataclasses.is_dataclass(kind):
        return _decode_fields(kind, value, where)
    raise TypeError(f"no decoder for {kind!r}")  # a message type this codec does not know


def _decode_fields(kind: Any, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise _fail(where, "must be an object")
    hints = _hints(kind)
    found = {}
    for f in dataclasses.fields(kind):
        if f.name in value:
            found[f.name] = _decode(hints[f.name], value[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _fail(f"{where}.{f.name}", "is missing")
    return kind(**found)
