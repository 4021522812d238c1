"""The dispatcher's state machine: fencing, expiry, dependencies, restarts."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from stager.digest import Digest
from stager.errors import (
    ConfigError,
    NotFoundError,
    PreconditionFailedError,
    StaleAttemptError,
)
from stager.locations import S3Url
from worker_hooks.dispatch.scheduling import Policy
from worker_hooks.dispatch.schema import SCHEMA_VERSION, open_database
from worker_hooks.dispatch.taskdb import Limits, TaskDB
from worker_hooks.task.key import key_of_spec
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.protocol import (
    Assignment,
    Completion,
    InputUse,
    Lease,
    NodeOnly,
    Replica,
    RetryRequest,
    TaskState,
    Written,
)
from worker_hooks.task.result import FileRecord, Persist, ResultManifest
from worker_hooks.task.spec import InputSpec, task_of

DIGEST = Digest.parse("xxh3-128:" + "c" * 32)
OTHER = Digest.parse("xxh3-128:" + "d" * 32)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def task(task_id: str, *inputs: str) -> dict[str, Any]:
    return {
        "id": task_id,
        "command": ["true"],
        "inputs": [{"source": s, "path": f"in{n}"} for n, s in enumerate(inputs)],
        "outputs": [{"path": "out.txt", "to": f"s3://bkt/out/{task_id}.txt"}],
    }


def result_for(task_id: str) -> ResultManifest:
    return ResultManifest(
        task_id=task_id,
        task_key="k",
        command=("true",),
        exit_code=0,
        host="h",
        started_at="t",
        outputs=(FileRecord("out.txt", S3Url.parse(f"s3://bkt/out/{task_id}.txt"), DIGEST, 5),),
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path, clock: Clock) -> TaskDB:
    return TaskDB(tmp_path / "d.sqlite", Limits(lease_s=10, max_failures=2), clock=clock)


def submit(db: TaskDB, *bodies: dict[str, Any]) -> None:
    db.submit("wf", [parse_spec(body) for body in bodies])


def test_a_stale_completion_is_refused_after_the_lease_expired(db: TaskDB, clock: Clock) -> None:
    submit(db, task("t"))
    (first,) = db.lease("w1", 5)
    clock.now += 11
    assert db.expire() == 1
    (second,) = db.lease("w2", 5)
    assert second.attempt == first.attempt + 1
    with pytest.raises(StaleAttemptError):
        db.complete("wf/t", first.attempt, "w1", result_for("t"))
    db.complete("wf/t", second.attempt, "w2", result_for("t"))
    with pytest.raises(StaleAttemptError):  # nor can it overwrite an accepted result
        db.complete("wf/t", first.attempt, "w1", result_for("t"))
    assert db.task("t").state is TaskState.DONE
    assert db.assignments("t") == [Assignment("wf/t", 1, "w1"), Assignment("wf/t", 2, "w2")]


def test_a_late_completion_inside_a_batch_is_refused_and_the_rest_accepted(
    db: TaskDB,
) -> None:
    submit(db, task("a"), task("b"), task("c"))
    attempts = {lease.task_id: lease.attempt for lease in db.lease("w1", 3)}
    db.release("wf/b", attempts["wf/b"], "w1")  # b's lease ends here...
    (again,) = db.lease("w2", 1)  # ...and b is leased again, to another worker
    assert again.task_id == "wf/b" and again.attempt == attempts["wf/b"] + 1
    batch = [Completion(t, n, result_for(t.removeprefix("wf/"))) for t, n in attempts.items()]
    refused = db.complete_many("w1", [*batch, Completion("wf/gone", 1, result_for("gone"))])
    assert refused == ["wf/b", "wf/gone"]
    assert db.task("a").state is TaskState.DONE and db.task("c").state is TaskState.DONE
    assert db.task("b").state is TaskState.LEASED  # w1's late result changed nothing
    assert db.complete_many("w2", [Completion("wf/b", again.attempt, result_for("b"))]) == []
    assert db.task("b").state is TaskState.DONE


def test_heartbeats_keep_a_lease_and_report_stale_ones(db: TaskDB, clock: Clock) -> None:
    submit(db, task("t"))
    (lease,) = db.lease("w1", 1)
    for _ in range(3):
        clock.now += 8
        assert db.heartbeat("w1", [("wf/t", lease.attempt)]).drop == ()
        assert db.expire() == 0
    assert db.heartbeat("w1", [("wf/t", lease.attempt + 1)]).drop == ("wf/t",)


def test_expiry_past_the_limit_fails_the_task(db: TaskDB, clock: Clock) -> None:
    submit(db, task("t"))
    for _ in range(2):
        db.lease("w1", 1)
        clock.now += 11
        db.expire()
    info = db.task("t")
    assert info.state is TaskState.FAILED and "expired" in (info.error or "")


def test_dependant_runs_after_its_producer_with_the_recorded_output(db: TaskDB) -> None:
    submit(db, task("map"), task("reduce", "task://map/out.txt"))
    assert db.counts()["waiting"] == 1
    (lease,) = db.lease("w1", 5)
    assert lease.spec.id == "map"
    db.complete("wf/map", lease.attempt, "w1", result_for("map"), [InputUse(DIGEST, 5, False)])
    (reduce_lease,) = db.lease("w1", 5)
    (item,) = reduce_lease.spec.inputs
    assert item == InputSpec(S3Url.parse("s3://bkt/out/map.txt"), "in0", DIGEST, 5)


def test_a_failed_producer_fails_its_dependants_transitively(db: TaskDB) -> None:
    submit(db, task("a"), task("b", "task://a/out.txt"), task("c", "task://b/out.txt"))
    (lease,) = db.lease("w1", 5)
    failed = db.fail("wf/a", lease.attempt, "w1", "command exited with code 1", retry=False)
    assert failed is TaskState.FAILED
    for dependant in ("b", "c"):
        info = db.task(dependant)
        assert info.state is TaskState.FAILED and "producer" in (info.error or "")
    # A late submission that depends on the failed task fails at once.
    submit(db, task("d", "task://a/out.txt"))
    assert db.task("d").state is TaskState.FAILED


def test_a_done_task_keeps_no_error_of_an_earlier_attempt(db: TaskDB) -> None:
    submit(db, task("t"))
    (first,) = db.lease("w1", 1)
    db.fail("wf/t", first.attempt, "w1", "the S3 endpoint did not answer", retry=True)
    (second,) = db.lease("w2", 1)
    db.complete("wf/t", second.attempt, "w2", result_for("t"))
    info = db.task("t")
    assert info.state is TaskState.DONE and info.error is None


def test_release_requeues_without_counting_a_failure(db: TaskDB) -> None:
    submit(db, task("t"))
    (lease,) = db.lease("w1", 1)
    db.release("wf/t", lease.attempt, "w1")
    info = db.task("t")
    assert info.state is TaskState.QUEUED and info.failures == 0
    with pytest.raises(StaleAttemptError):
        db.release("wf/t", lease.attempt, "w1")


def test_batch_checks(db: TaskDB) -> None:
    with pytest.raises(ConfigError, match="unknown task") as unknown:
        submit(db, task("b", "task://nope/out.txt"))
    with pytest.raises(ConfigError, match="cycle") as cycle:
        submit(db, task("x", "task://y/out.txt"), task("y", "task://x/out.txt"))
    for refused in (unknown, cycle):  # the hint speaks of the workflow, not of settings
        assert "STAGER_" not in refused.value.hint and "workflow" in refused.value.hint
    with pytest.raises(ConfigError, match="does not declare") as undeclared:
        submit(db, task("p"), task("q", "task://p/outt.txt"))
    assert "its outputs: out.txt" in undeclared.value.message
    with pytest.raises(ConfigError, match="workflow name 'a b'"):
        db.submit("a b", [parse_spec(task("t"))])


def test_task_ids_are_unique_within_their_workflow_only(db: TaskDB) -> None:
    submit(db, task("t"), task("u", "task://t/out.txt"))
    db.submit("other", [parse_spec(task("t"))])
    assert sorted(lease.task_id for lease in db.lease("w", 5)) == ["other/t", "wf/t"]
    with pytest.raises(PreconditionFailedError, match=r"in more than one workflow \(other, wf\)"):
        db.task("t")
    assert db.task("wf/t").workflow == "wf" and db.task("u").id == "u"  # u: only wf has one
    db.complete("other/t", 1, "w", result_for("t"))
    assert db.task("wf/u").state is TaskState.WAITING  # for its own workflow's t
    with pytest.raises(ConfigError, match="unknown task"):  # another workflow's is not seen
        db.submit("third", [parse_spec(task("v", "task://u/out.txt"))])


def test_submitting_again_keeps_what_is_unchanged_and_reruns_the_rest(
    db: TaskDB, clock: Clock
) -> None:
    flow = [task("a"), task("b", "task://a/out.txt"), task("c"), task("d", "task://c/out.txt")]
    submit(db, *flow)
    run(db, "w", result_for("a"))
    (lease,) = db.lease("w", 1)
    assert lease.spec.id == "b"  # deepest first
    db.fail(lease.task_id, lease.attempt, "w", "exit 1", retry=False)
    run(db, "w", result_for("c"))
    (lease,) = db.lease("w", 1)
    run_leased(db, lease, "d")
    assert db.counts("wf")["failed"] == 1 and db.counts("wf")["done"] == 3

    fixed = {**task("c"), "command": ["echo", "fixed"]}
    reply = db.submit("wf", [parse_spec(body) for body in (*flow[:2], fixed, flow[3])])
    # b failed: it runs again; c changed: it and d (downstream) run again; a is kept.
    assert (reply.submitted, reply.again, reply.kept) == ((), ("b", "c", "d"), ("a",))
    assert db.task("a").state is TaskState.DONE
    assert db.task("b").state is TaskState.QUEUED  # its producer's result still stands
    assert db.task("c").state is TaskState.QUEUED
    assert db.task("d").state is TaskState.WAITING  # for the new c
    assert [lease.spec.id for lease in db.lease("w", 5)] == ["b", "c"]
    same = db.submit("wf", [parse_spec(body) for body in (*flow[:2], fixed, flow[3])])
    assert same.again == () and same.kept == ("a", "b", "c", "d")  # nothing changed


def test_a_restarted_dispatcher_loses_nothing(tmp_path: Path, clock: Clock) -> None:
    first = TaskDB(tmp_path / "d.sqlite", Limits(lease_s=10), clock=clock)
    submit(first, task("a"), task("b", "task://a/out.txt"), task("c"))
    (lease,) = first.lease("w1", 1)
    first.close()
    again = TaskDB(tmp_path / "d.sqlite", Limits(lease_s=10), clock=clock)
    assert again.counts() == {
        "waiting": 1,
        "queued": 1,
        "leased": 1,
        "done": 0,
        "failed": 0,
        "cancelled": 0,
    }
    again.complete("wf/a", lease.attempt, "w1", result_for("a"))
    assert {lease.spec.id for lease in again.lease("w2", 5)} == {"b", "c"}


def test_cache_reports_steer_max_cache_hit(tmp_path: Path, clock: Clock) -> None:
    db = TaskDB(tmp_path / "d.sqlite", Limits(policy=Policy.MAX_CACHE_HIT), clock=clock)
    held = Digest.parse("xxh3-128:" + "d" * 32)
    body = task("hit")
    body["inputs"] = [{"source": "s3://bkt/ref", "path": "ref", "digest": str(held), "size": 9}]
    db.touch_worker("holder")
    db.report_cache("holder", added=[held], removed=[], full=True)
    submit(db, body)
    assert db.lease("other", 5) == []
    assert [lease.spec.id for lease in db.lease("holder", 5)] == ["hit"]


def test_a_digest_typed_in_upper_case_still_scores_a_cache_hit(
    tmp_path: Path, clock: Clock
) -> None:
    # The spec's digest and the worker's report are the same value, whatever the case.
    db = TaskDB(tmp_path / "d.sqlite", Limits(policy=Policy.MAX_CACHE_HIT), clock=clock)
    held = Digest.parse("xxh3-128:" + "e" * 32)
    body = task("hit")
    shouted = "XXH3-128:" + "E" * 32
    body["inputs"] = [{"source": "s3://bkt/ref", "path": "ref", "digest": shouted, "size": 9}]
    db.touch_worker("holder")
    db.report_cache("holder", added=[held], removed=[], full=True)
    submit(db, body)
    assert db.lease("other", 5) == []
    assert [lease.spec.id for lease in db.lease("holder", 5)] == ["hit"]


def test_a_database_of_another_schema_version_is_refused(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "d.sqlite"
    TaskDB(path, Limits(), clock=clock).close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match=f"schema version {SCHEMA_VERSION + 1}") as caught:
        TaskDB(path, Limits(), clock=clock)
    assert f"reads version {SCHEMA_VERSION}" in caught.value.message
    # An unrelated SQLite file is not taken for an empty task database either.
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as raw:
        raw.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(ConfigError, match="schema version 0"):
        TaskDB(other, Limits(), clock=clock)


def test_a_workflow_larger_than_sqlites_variable_limit(db: TaskDB) -> None:
    # As an older SQLite build would: at most 999 variables per statement.
    db._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    db.submit("big", [parse_spec(task(f"t{n}")) for n in range(1200)])
    assert db.counts("big")["queued"] == 1200
    assert db.submitted_specs("big", [f"t{n}" for n in range(0, 2400, 2)]).keys() == {
        f"t{n}" for n in range(0, 1200, 2)
    }


def test_the_database_and_its_journal_are_readable_by_their_owner_only(
    tmp_path: Path, clock: Clock
) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "state" / "d.sqlite"
        db = TaskDB(path, Limits(), clock=clock)
        body = {**task("t"), "env": {"API_KEY": "s3cr3t"}}
        submit(db, body)
        files = [path, path.with_name("d.sqlite-wal"), path.with_name("d.sqlite-shm")]
        assert all(f.exists() for f in files)
        assert {oct(f.stat().st_mode & 0o777) for f in files} == {"0o600"}
        db.close()
        path.chmod(0o644)  # made before this rule: tightened when opened
        TaskDB(path, Limits(), clock=clock).close()
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_an_input_without_a_digest_is_scheduled_by_what_a_completion_learned(
    tmp_path: Path, clock: Clock
) -> None:
    db = TaskDB(tmp_path / "d.sqlite", Limits(policy=Policy.MAX_CACHE_HIT), clock=clock)
    db.touch_worker("holder")
    db.touch_worker("other")
    submit(db, task("first", "s3://bkt/ref/genome.fa"))  # no digest anywhere
    (lease,) = db.lease("holder", 1)
    learned = Digest.parse("xxh3-128:" + "f" * 32)
    record = FileRecord("in0", S3Url.parse("s3://bkt/ref/genome.fa"), learned, 9)
    done = replace(result_for("first"), inputs=(record,))
    db.complete("wf/first", lease.attempt, "holder", done, [InputUse(learned, 9, False)])
    submit(db, task("second", "s3://bkt/ref/genome.fa"))
    assert db.lease("other", 5) == []  # kept for the worker whose cache holds it
    assert [lease.spec.id for lease in db.lease("holder", 5)] == ["second"]


def test_a_task_whose_producers_finished_goes_before_more_of_their_kind(
    db: TaskDB, clock: Clock
) -> None:
    maps = [task(f"map{n}") for n in range(4)]
    reduce = task("reduce", "task://map0/out.txt", "task://map1/out.txt")
    submit(db, reduce, *maps)  # listed first, submitted before its producers exist
    submit(db, task("gather", "task://reduce/out.txt"))
    for name in ("map0", "map1"):
        run(db, "w", result_for(name))
    # The reduce (depth 1) is ready: it goes before the maps still queued (depth 0).
    assert [lease.spec.id for lease in db.lease("w", 2)] == ["reduce", "map2"]
    assert db.task("gather").state is TaskState.WAITING


def test_retrying_a_dependant_alone_fails_it_again_rather_than_waiting_for_ever(
    db: TaskDB,
) -> None:
    submit(db, task("p"), task("c", "task://p/out.txt"))
    (lease,) = db.lease("w", 1)
    db.fail("wf/p", lease.attempt, "w", "exit 1", retry=False)  # c fails with it
    reply = db.retry("wf", RetryRequest(tasks=("c",)))
    assert reply.again == ("c",)
    assert db.task("c").state is TaskState.FAILED
    assert db.task("c").error == "producer p failed"
    both = db.retry("wf", RetryRequest())  # the producer too: both run again
    assert both.again == ("c", "p") and db.task("c").state is TaskState.WAITING


def test_a_version_1_database_is_migrated(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "d.sqlite"
    TaskDB(path, Limits(), clock=clock).close()
    with sqlite3.connect(path) as raw:  # as version 1 made it
        raw.execute("DROP INDEX tasks_status")
        raw.execute("CREATE INDEX tasks_by_workflow ON tasks(workflow, state)")
        raw.execute("DROP TABLE learned")
        raw.execute("DROP TABLE outputs")
        raw.execute("ALTER TABLE tasks DROP COLUMN bytes_from_peers")
        raw.execute("ALTER TABLE workers DROP COLUMN address")
        raw.execute("ALTER TABLE workers DROP COLUMN suspect_until")
        raw.execute("DROP INDEX tasks_ready")
        raw.execute("ALTER TABLE tasks DROP COLUMN depth")
        raw.execute("PRAGMA user_version=1")
    db = TaskDB(path, Limits(), clock=clock)
    submit(db, task("t", "s3://bkt/x"))
    assert db.counts()["queued"] == 1


def test_ids_of_a_version_4_database_are_qualified_by_their_workflow(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "d.sqlite"
    db = TaskDB(path, Limits(), clock=clock)
    submit(db, task("p"), task("c", "task://p/out.txt"))
    db.close()
    with sqlite3.connect(path) as raw:  # as version 4 kept them: ids unique per dispatcher
        raw.execute("UPDATE tasks SET id = substr(id, 4)")
        raw.execute("UPDATE deps SET task = substr(task, 4), producer = substr(producer, 4)")
        raw.execute("UPDATE edges SET task = substr(task, 4), producer = substr(producer, 4)")
        raw.execute("PRAGMA user_version=4")
    db = TaskDB(path, Limits(), clock=clock)
    run(db, "w", result_for("p"))
    (lease,) = db.lease("w", 1)
    assert lease.task_id == "wf/c" and db.task("c").state is TaskState.LEASED


def test_a_lease_names_the_peers_holding_its_inputs_and_where_to_mirror(
    db: TaskDB, clock: Clock
) -> None:
    db.touch_worker("b", address="10.0.0.2:8766")
    db.touch_worker("c")  # no file service: never offered
    db.touch_worker("d", address="10.0.0.4:8766")
    db.report_cache("b", added=[DIGEST], removed=[])
    db.report_cache("c", added=[DIGEST], removed=[])
    body = task("t")
    body["inputs"] = [{"source": "s3://bkt/ref", "path": "ref", "digest": str(DIGEST), "size": 5}]
    body["outputs"] = [{"path": "x", "to": "s3://bkt/x", "persist": "mirror"}]
    plain = {**body, "id": "s3-only", "outputs": [{"path": "x", "to": "s3://bkt/y"}]}
    submit(db, body, {**body, "id": "u"}, {**body, "id": "v"}, plain)

    (lease,) = db.lease("a", 1, address="10.0.0.1:8766")
    assert lease.peers == (Replica(DIGEST, ("10.0.0.2:8766",)),)
    assert set(lease.mirror_to) == {"10.0.0.2:8766", "10.0.0.4:8766"}  # never itself

    db.suspect(["10.0.0.2:8766"])  # a worker reported it failing
    (lease,) = db.lease("a", 1)
    assert lease.peers == () and lease.mirror_to == ("10.0.0.4:8766",)

    clock.now += Limits().worker_timeout_s + 1  # every peer went silent
    db.touch_worker("a")
    (lease,) = db.lease("a", 1)
    assert lease.peers == () and lease.mirror_to == ()

    db.touch_worker("b", address="10.0.0.2:8766")
    (lease,) = db.lease("a", 1)  # no output of its is mirrored: no peers asked for
    assert lease.task_id.endswith("s3-only") and lease.mirror_to == ()
    assert lease.peers == (Replica(DIGEST, ("10.0.0.2:8766",)),)


def test_outputs_kept_on_nodes_are_listed_until_written_behind(db: TaskDB) -> None:
    submit(db, task("t"))
    (lease,) = db.lease("w1", 1)
    mirrored = FileRecord("m", S3Url.parse("s3://bkt/m"), DIGEST, 7, Persist.MIRROR)
    local = FileRecord("l", S3Url.parse("s3://bkt/l"), OTHER, 11, Persist.LOCAL)
    result = replace(result_for("t"), outputs=(*result_for("t").outputs, mirrored, local))
    db.complete("wf/t", lease.attempt, "w1", result)
    status = db.status("wf")
    assert status.node_only == (NodeOnly("wf", 2, 18),) and status.bytes_written_behind == 0

    db.heartbeat("w2", [], written=[Written(DIGEST, mirrored.url)])  # the mirror wrote it
    status = db.status("wf")
    assert status.node_only == (NodeOnly("wf", 1, 11),) and status.bytes_written_behind == 7


def local_result(task_id: str, digest: Digest, kept: Persist = Persist.LOCAL) -> ResultManifest:
    record = FileRecord("out.txt", S3Url.parse(f"s3://bkt/out/{task_id}.txt"), digest, 5, kept)
    return replace(result_for(task_id), outputs=(record,))


def run_leased(db: TaskDB, lease: Lease, name: str) -> None:
    assert lease.spec.id == name
    db.complete(lease.task_id, lease.attempt, "w", result_for(name))


def run(db: TaskDB, worker: str, result: ResultManifest, uses: tuple[Digest, ...] = ()) -> None:
    (lease,) = db.lease(worker, 1, address=f"{worker}.nodes:8766")
    assert lease.spec.id == result.task_id
    db.complete(lease.task_id, lease.attempt, worker, result, [InputUse(d, 5, True) for d in uses])


def test_losing_the_only_copy_of_a_needed_intermediate_recomputes_its_producer(
    db: TaskDB, clock: Clock
) -> None:
    submit(db, task("q"), task("p", "task://q/out.txt"), task("c", "task://p/out.txt"))
    run(db, "a", local_result("q", DIGEST))
    run(db, "a", local_result("p", OTHER), uses=(DIGEST,))
    assert db.task("c").state is TaskState.QUEUED

    dry = db.recover("a", dry_run=True)
    assert (dry.recomputed, dry.reset) == (("wf/p", "wf/q"), ("wf/c",))
    assert db.task("c").state is TaskState.QUEUED and db.task("p").state is TaskState.DONE
    assert not db.status().workers[0].lost  # a dry run changes nothing

    report = db.recover("a")
    assert report == replace(dry, dry_run=False)
    assert [db.task(t).state for t in ("q", "p", "c")] == [
        TaskState.QUEUED,
        TaskState.WAITING,
        TaskState.WAITING,
    ]
    assert db.status().workers[0].lost
    # Recomputed elsewhere, with other bytes: the dependant reads what was made now.
    fresh = Digest.parse("xxh3-128:" + "e" * 32)
    run(db, "b", local_result("q", fresh))
    run(db, "b", local_result("p", OTHER), uses=(fresh,))
    (lease,) = db.lease("b", 1)
    assert lease.spec.id == "c" and lease.spec.inputs[0].digest == OTHER


def test_outputs_another_node_holds_are_safe_and_unneeded_ones_are_dropped(db: TaskDB) -> None:
    submit(db, task("m"), task("gone"), task("c", "task://gone/out.txt"))
    run(db, "a", local_result("m", DIGEST, Persist.MIRROR))
    db.report_cache("mirror", added=[DIGEST], removed=[])
    run(db, "a", local_result("gone", OTHER))
    run(db, "b", result_for("c"), uses=(OTHER,))  # its only reader has ended
    db.report_cache("b", added=[], removed=[OTHER])
    report = db.recover("a")
    assert (report.outputs_from_mirror, report.outputs_dropped) == (1, 1)
    assert report.recomputed == () and report.reset == ()


def test_a_silent_worker_is_found_lost_its_lease_requeued_and_it_may_come_back(
    db: TaskDB, clock: Clock
) -> None:
    submit(db, task("t"))
    (lease,) = db.lease("a", 1)
    db.touch_worker("b")
    clock.now += db.limits.lease_s + 1
    db.touch_worker("b")
    (found,) = db.find_lost()
    assert found.worker == "a" and found.requeued == ("wf/t",)
    assert db.task("t").state is TaskState.QUEUED
    with pytest.raises(StaleAttemptError):  # its attempt cannot complete any more
        db.complete("wf/t", lease.attempt, "a", result_for("t"))
    assert db.find_lost() == []  # found once
    # Its leases sent with a request are refused; only a heartbeat takes it back.
    assert db.extend("a", [("wf/t", lease.attempt)]) == (["wf/t"], True)
    assert db.heartbeat("a", []).report_all  # back: it must report its whole cache
    assert not db.heartbeat("a", []).report_all
    with pytest.raises(NotFoundError):
        db.recover("nobody")


def test_the_time_a_dispatcher_was_down_counts_against_no_worker(db: TaskDB, clock: Clock) -> None:
    submit(db, task("t"))
    (lease,) = db.lease("a", 1)
    clock.now += 3 * db.limits.lease_s  # the dispatcher was stopped, then started again
    db.resume()
    assert db.expire() == 0 and db.find_lost() == []
    db.complete("wf/t", lease.attempt, "a", result_for("t"))
    assert db.task("t").state is TaskState.DONE
    clock.now += db.limits.lease_s + 1  # a worker that never comes back is still found
    (found,) = db.find_lost()
    assert found.worker == "a"


def test_dependants_that_failed_for_want_of_a_lost_input_run_again(db: TaskDB) -> None:
    submit(db, task("p"), task("c", "task://p/out.txt"), task("d", "task://c/out.txt"))
    run(db, "a", local_result("p", DIGEST))
    (lease,) = db.lease("b", 1)  # "a" looks alive: c is leased, and cannot get its input
    db.fail("wf/c", lease.attempt, "b", "input s3://bkt/out/p.txt does not exist", retry=False)
    assert db.task("d").state is TaskState.FAILED  # with its producer
    report = db.recover("a")
    assert report.recomputed == ("wf/p",) and report.reset == ("wf/c", "wf/d")
    assert [db.task(t).state for t in ("p", "c", "d")] == [
        TaskState.QUEUED,
        *[TaskState.WAITING] * 2,
    ]


def test_a_lease_carries_the_result_the_dispatcher_holds_for_its_key(db: TaskDB) -> None:
    with_digest = {"source": "s3://bkt/ref", "path": "ref", "digest": str(DIGEST), "size": 5}
    first = {**task("first"), "inputs": [with_digest]}
    submit(db, first)
    (lease,) = db.lease("w", 1)
    key = key_of_spec(lease.spec)
    assert key is not None and lease.memo_key == key and lease.memo is None  # nothing yet
    done = replace(result_for("first"), task_key=key)
    db.complete(lease.task_id, lease.attempt, "w", done)
    # Another task computing the same thing (other id, same command, inputs, outputs)
    # is leased with that result; one whose input has no digest only with no key.
    again = {**first, "id": "again"}
    unknown = {**task("unknown", "s3://bkt/ref")}
    submit(db, again, unknown)
    leases = {lease.task_id: lease for lease in db.lease("w", 2)}
    assert leases["wf/again"].memo == done and leases["wf/again"].memo_key == key
    assert leases["wf/unknown"].memo_key is None and leases["wf/unknown"].memo is None
    # A node that learns a key by itself asks for it; results read back from S3 count too.
    assert db.recorded([key, "0" * 32]) == [done]
    elsewhere = replace(result_for("x"), task_key="1" * 32)
    db.remember([elsewhere])
    assert db.recorded(["1" * 32]) == [elsewhere]


def test_a_version_5_database_gets_a_memo_of_its_done_tasks(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "d.sqlite"
    db = TaskDB(path, Limits(), clock=clock)
    submit(db, task("p"))
    run(db, "w", replace(result_for("p"), task_key="2" * 32))
    db.close()
    with sqlite3.connect(path) as raw:  # as version 5 made it: no memo table
        raw.execute("DROP TABLE memo")
        raw.execute("PRAGMA user_version=5")
    db = TaskDB(path, Limits(), clock=clock)
    (found,) = db.recorded(["2" * 32])
    assert found.task_id == "p" and db.task("p").state is TaskState.DONE


def test_leases_sent_with_a_request_are_extended_as_by_a_heartbeat(
    db: TaskDB, clock: Clock
) -> None:
    submit(db, task("a"), task("b"))
    a, b = db.lease("w1", 2)
    clock.now += 8
    drop, lost = db.extend("w1", [(a.task_id, a.attempt), (b.task_id, b.attempt + 1)])
    assert (drop, lost) == (["wf/b"], False)  # b's attempt is not the one held
    clock.now += 8  # past b's lease, not past a's extended one
    assert db.expire() == 1
    assert db.task("a").state is TaskState.LEASED and db.task("b").state is TaskState.QUEUED


def test_status_reads_task_rows_only_of_the_running_and_failed(db: TaskDB) -> None:
    """How `stager status` stays quick over 100,000 tasks: its sums and counts come from
    an index alone; only the lists of running and failed tasks (short, and cut at a
    limit) read task rows."""
    submit(db, *(task(f"t{n}") for n in range(50)))
    (lease, *_) = db.lease("w", 5)
    db.complete(lease.task_id, lease.attempt, "w", result_for(task_of(lease.task_id)))
    statements: list[str] = []
    db._db.set_trace_callback(statements.append)
    try:
        db.status("wf")
        db.status()
    finally:
        db._db.set_trace_callback(None)
    reads = [s for s in statements if s.lstrip().startswith("SELECT") and " tasks" in s]
    assert reads
    for statement in reads:
        plan = [row[3] for row in db._db.execute(f"EXPLAIN QUERY PLAN {statement}")]
        for step in plan:
            if step.startswith(("SCAN tasks", "SEARCH tasks", "SCAN t ", "SEARCH t ")):
                assert "COVERING INDEX" in step or "state=?" in step, (statement, plan)


def test_the_wal_file_is_cut_back_once_a_burst_of_writes_is_checkpointed(tmp_path: Path) -> None:
    db = open_database(tmp_path / "d.sqlite", wal_kept_bytes=256 * 1024)
    wal = tmp_path / "d.sqlite-wal"
    db.execute("PRAGMA wal_autocheckpoint = 0")  # as when a Checkpointer runs
    db.execute("CREATE TABLE t (b BLOB)")
    for _ in range(40):  # a large submit, say
        db.execute("INSERT INTO t VALUES (randomblob(100000))")
    assert wal.stat().st_size > 4 * 1024 * 1024
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    db.execute("INSERT INTO t VALUES (1)")  # starts the WAL over, and cuts the file back
    assert wal.stat().st_size <= 256 * 1024
    db.close()


def test_a_lease_says_whether_a_known_task_reads_the_outputs(db: TaskDB) -> None:
    submit(db, task("map"), task("lone"), task("reduce", "task://map/out.txt"))
    leases = {lease.spec.id: lease for lease in db.lease("w1", 5)}
    assert leases["map"].outputs_read  # the node keeps a copy for reduce
    assert not leases["lone"].outputs_read  # straight to S3
    db.complete("wf/map", leases["map"].attempt, "w1", result_for("map"))
    (reduce_lease,) = db.lease("w1", 5)
    assert not reduce_lease.outputs_read


def test_a_memoized_completion_lists_no_outputs_on_its_node(db: TaskDB) -> None:
    submit(db, task("found"), task("made"))
    leases = {lease.spec.id: lease for lease in db.lease("w1", 2)}
    db.complete("wf/found", leases["found"].attempt, "w1", result_for("found"), memoized=True)
    assert db.catalog.holders({DIGEST}).get(DIGEST, frozenset()) == frozenset()
    db.complete("wf/made", leases["made"].attempt, "w1", result_for("made"))
    assert db.catalog.holders({DIGEST})[DIGEST] == frozenset({"w1"})
