"""The wire protocol: every message round-trips; bad input is a ProtocolError naming the field."""

from __future__ import annotations

import json

import pytest

from stager.digest import digest_bytes
from stager.errors import ProtocolError
from stager.locations import S3Url
from worker_hooks.task import protocol
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.protocol import (
    PROTOCOL_VERSION,
    Assignment,
    AssignmentsReply,
    AttemptInfo,
    CacheReport,
    CompleteRequest,
    Completion,
    CompletionsReply,
    CompletionsRequest,
    ErrorReply,
    FailRequest,
    HeartbeatReply,
    HeartbeatRequest,
    Held,
    InputUse,
    Lease,
    LeaseReply,
    LeaseRequest,
    MemoReply,
    MemoRequest,
    Message,
    NodeOnly,
    RecoverRequest,
    RecoveryReport,
    ReleaseRequest,
    Replica,
    RetryRequest,
    StateReply,
    StatusReply,
    SubmitReply,
    SubmitRequest,
    TaskBrief,
    TaskInfo,
    TaskState,
    TaskTimeline,
    WorkerInfo,
    WorkflowReport,
    Written,
    check_version,
)
from worker_hooks.task.result import FileRecord, ResultManifest

D1, D2 = digest_bytes(b"one"), digest_bytes(b"two")
URL = S3Url.parse("s3://bkt/out/m.bin")
SPEC = parse_spec(
    {
        "id": "reduce",
        "command": "cat parts/* > out.txt",
        "shell": True,
        "env": {"LANG": "C"},
        "timeout_s": 30,
        "inputs": [
            {"source": "s3://bkt/ref.fa", "path": "ref.fa", "digest": str(D1), "size": 3},
            {"source": "task://map-1/out.txt", "path": "parts/1"},
        ],
        "outputs": [{"path": "out.txt", "to": "s3://bkt/out/out.txt"}],
    }
)
RESULT = ResultManifest(
    task_id="reduce",
    task_key="ab" * 16,
    command=("cat",),
    exit_code=0,
    host="node-1",
    started_at="2026-12-03T00:00:00.000+00:00",
    timings_s={"run": 0.5},
    inputs=(FileRecord("ref.fa", S3Url("bkt", "ref.fa"), D1, 3),),
    outputs=(FileRecord("out.txt", S3Url("bkt", "out/out.txt"), D2, 3),),
)
REPORT = CacheReport(full=False, added=(D1,), removed=(D2,))
SAMPLES: list[Message] = [
    SubmitRequest("wf", (SPEC,)),
    SubmitReply(("reduce",)),
    SubmitReply((), again=("map-1", "reduce"), kept=("map-0",)),
    RetryRequest(only_failed=True, tasks=("map-1",)),
    StateReply(TaskState.QUEUED),
    TaskInfo("reduce", "wf", TaskState.DONE, 2, 1, "node-1", "old error", RESULT),
    TaskInfo("map", "wf", TaskState.WAITING, 0, 0, None, None, None),
    TaskInfo(
        "map",
        "wf",
        TaskState.FAILED,
        2,
        2,
        None,
        "exit 1",
        None,
        attempts=(
            AttemptInfo(1, "node-1", 10.0, 11.5, "failed", "exit 1", (URL,)),
            AttemptInfo(2, "node-2", 12.0),
        ),
    ),
    StatusReply(
        policy="fifo",
        counts={"done": 3, "queued": 0},
        workers=(WorkerInfo("node-1", True, 0.4, 1, 4096, 2),),
        bytes_from_s3=10,
        bytes_from_cache=30,
        cache_hit_rate=0.75,
        tasks_per_s_last_minute=0.05,
        tasks_per_s_overall=None,
    ),
    StatusReply(
        policy="fifo",
        counts={"done": 3},
        workers=(WorkerInfo("node-2", False, 99.0, 0, 0, 0, "10.0.0.2:8766", lost=True),),
        bytes_from_s3=0,
        bytes_from_cache=30,
        cache_hit_rate=1.0,
        tasks_per_s_last_minute=0.0,
        tasks_per_s_overall=0.1,
        node_only=(NodeOnly("wf", 2, 300),),
        bytes_from_peers=20,
        bytes_written_behind=7,
        running=(TaskBrief("map-2", 1, "node-1", 3.5),),
        failed=(TaskBrief("map-3", 3, None, 60.0, "exit 1"),),
    ),
    AssignmentsReply((Assignment("reduce", 1, "node-1"),)),
    WorkflowReport(
        "wf",
        (
            TaskTimeline(
                "map-1",
                TaskState.DONE,
                10,
                30,
                20,
                False,
                (AttemptInfo(1, "node-1", 1.0, 2.0),),
                seconds={"stage_in": 0.25, "run": 1.5},
            ),
            TaskTimeline("reduce", TaskState.FAILED, 0, 0, 0, True, (), "producer map-2 failed"),
        ),
    ),
    LeaseRequest("node-1", 4, 5.0, REPORT),
    LeaseRequest("node-1"),
    LeaseRequest("node-1", 1, 0.0, None, "10.0.0.1:8766"),
    LeaseReply((Lease("reduce", 3, SPEC, 1234.5),), 60.0),
    LeaseReply(
        (Lease("r", 3, SPEC, 1.0, (Replica(D1, ("10.0.0.2:8766",)),), ("10.0.0.3:8766",)),), 60.0
    ),
    HeartbeatRequest("node-1", (Held("reduce", 3),), 4096, REPORT),
    HeartbeatRequest("node-1", (), 0, None, ("10.0.0.9:8766",), (Written(D1, URL),)),
    HeartbeatReply(("stale-task",)),
    HeartbeatReply((), report_all=True),
    CompleteRequest("node-1", 3, RESULT, (InputUse(D1, 3, from_cache=True),)),
    CompleteRequest(
        "node-1", 3, RESULT, (InputUse(D1, 3, from_cache=True, from_peer=True),), memoized=True
    ),
    CompletionsRequest(
        "node-1",
        (
            Completion("wf/map-0", 3, RESULT, (InputUse(D1, 3, from_cache=True),)),
            Completion("wf/map-1", 1, RESULT, memoized=True),
        ),
    ),
    CompletionsReply(("wf/map-1",)),
    CompletionsReply(()),
    LeaseReply((Lease("r", 1, SPEC, 1.0, memo_key="ab" * 16, memo=RESULT),), 60.0),
    LeaseReply((Lease("r", 1, SPEC, 1.0, memo_key="ab" * 16),), 60.0),
    LeaseRequest("node-1", 2, 1.0, None, None, (Held("wf/a", 3), Held("wf/b", 1))),
    LeaseReply((), 60.0, ("wf/a",), beat_now=True),
    CompletionsRequest("node-1", (Completion("wf/c", 1, RESULT),), (Held("wf/d", 2),)),
    CompletionsReply((), ("wf/d",), beat_now=True),
    MemoRequest(("ab" * 16, "cd" * 16)),
    MemoReply((RESULT,)),
    MemoReply(()),
    RecoverRequest(dry_run=True),
    RecoveryReport("node-2", False, 3, 1, 0, ("map-1",), ("reduce",), ("map-2",)),
    FailRequest("node-1", 3, "the command exited with code 1", retry=False),
    FailRequest("node-1", 3, "exit 1", logs=(URL,)),
    ReleaseRequest("node-1", 3),
    ErrorReply("dispatcher: no task 'x'"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message) -> None:
    assert type(message).from_json(message.to_json()) == message


def test_every_message_type_has_a_sample() -> None:
    kinds = {
        value
        for value in vars(protocol).values()
        if isinstance(value, type) and issubclass(value, Message) and value is not Message
    }
    assert kinds == {type(m) for m in SAMPLES}


@pytest.mark.parametrize(
    ("kind", "body", "names"),
    [
        (LeaseRequest, {}, "LeaseRequest.worker is missing"),
        (LeaseRequest, {"worker": "w", "max_tasks": "2"}, "max_tasks must be a number"),
        (LeaseRequest, {"worker": "w", "max_tasks": 1.5}, "max_tasks must be a whole number"),
        (LeaseRequest, {"worker": "w", "cache": {"added": 5}}, "cache.added must be a list"),
        (LeaseRequest, {"worker": "w", "cache": {"added": ["md5:1"]}}, r"cache.added\[0\]"),
        (HeartbeatRequest, {"worker": "w", "held": [1, 2]}, r"held\[0\] must be an object"),
        (FailRequest, {"worker": "w", "attempt": True, "error": "x"}, "attempt must be a number"),
        (StateReply, {"state": "sleeping"}, "state is invalid"),
        (CompleteRequest, {"worker": "w", "attempt": 1, "result": "{"}, "result is invalid"),
        (SubmitRequest, {"workflow": "w", "tasks": [{"id": "x"}]}, r"tasks\[0\] is invalid"),
        (SubmitRequest, ["not", "an", "object"], "must be an object"),
    ],
)
def test_malformed_messages_name_the_field(kind: type[Message], body: object, names: str) -> None:
    with pytest.raises(ProtocolError, match=names):
        kind.from_json(json.dumps(body))


def test_deeply_nested_or_broken_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        LeaseRequest.from_json(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ProtocolError, match="not JSON"):
        LeaseRequest.from_json(b"{not json")


def test_another_protocol_version_is_refused_naming_both() -> None:
    check_version(str(PROTOCOL_VERSION))
    with pytest.raises(
        ProtocolError, match=f"speaks protocol '2'; this one speaks {PROTOCOL_VERSION}"
    ):
        check_version("2")
    with pytest.raises(ProtocolError, match="no protocol version"):
        check_version(None)
