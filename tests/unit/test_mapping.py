"""Tasks mapped over a producer's outputs (``each``): members made when the producer
commits, the template done with them, retries, resubmission and fencing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from stager.digest import Digest
from stager.errors import ConfigError, StaleAttemptError
from stager.locations import S3Url
from tests.unit.test_taskdb import Clock, result_for, run, submit
from worker_hooks.dispatch.taskdb import Limits, TaskDB
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.protocol import RetryRequest, TaskState
from worker_hooks.task.result import FileRecord, Persist, ResultManifest
from worker_hooks.task.spec import InputSpec

SPLIT = {
    "id": "split",
    "command": ["split"],
    "outputs": [{"path": "chunks/", "to": "s3://bkt/chunks/"}],
}
COUNT = {
    "id": "count",
    "command": ["wc"],
    "inputs": [{"source": "task://split/chunks/", "path": "chunk.txt", "each": True}],
    "outputs": [{"path": "n.txt", "to": "s3://bkt/n/"}],
}
TOTAL = {
    "id": "total",
    "command": ["cat"],
    "inputs": [{"source": "task://count/*/n.txt", "path": "counts"}],
    "outputs": [{"path": "sum.txt", "to": "s3://bkt/sum.txt"}],
}


def digest(number: int) -> Digest:
    return Digest.parse(f"xxh3-128:{number:032x}")


def made(task_id: str, *files: tuple[str, str]) -> ResultManifest:
    """A result recording ``(sandbox path, S3 url)`` files."""
    outputs = tuple(
        FileRecord(path, S3Url.parse(url), digest(n + 1), 3) for n, (path, url) in enumerate(files)
    )
    return replace(result_for(task_id), outputs=outputs)


@pytest.fixture
def db(tmp_path: Path) -> TaskDB:
    return TaskDB(tmp_path / "d.sqlite", Limits(lease_s=10, max_failures=2), clock=Clock())


def split_into(db: TaskDB, *names: str) -> None:
    files = [(f"chunks/{name}", f"s3://bkt/chunks/{name}") for name in names]
    run(db, "w", made("split", *files))


def test_members_are_made_when_the_producer_commits_and_the_template_gathers_them(
    db: TaskDB,
) -> None:
    submit(db, SPLIT, COUNT, TOTAL)
    split_into(db, "b/c.txt", "a.txt")
    assert db.task("count").state is TaskState.WAITING  # for its members, never leased
    leases = db.lease("w", 5)
    assert [lease.spec.id for lease in leases] == ["count.0", "count.1"]
    first, second = (lease.spec for lease in leases)
    assert first.inputs == (
        InputSpec(S3Url.parse("s3://bkt/chunks/a.txt"), "chunk.txt", digest(2), 3),
    )
    assert first.env["STAGER_ITEM"] == "a.txt" and second.env["STAGER_ITEM"] == "b/c.txt"
    assert [str(o.to) for o in second.outputs] == ["s3://bkt/n/b/c.txt/"]
    assert not first.mapped and first.command == ("wc",)

    db.complete("wf/count.1", 1, "w", made("count.1", ("n.txt", "s3://bkt/n/b/c.txt/n.txt")))
    assert db.task("total").state is TaskState.WAITING
    db.complete("wf/count.0", 1, "w", made("count.0", ("n.txt", "s3://bkt/n/a.txt/n.txt")))
    template = db.task("count")
    assert template.state is TaskState.DONE and template.result is not None
    assert [r.path for r in template.result.outputs] == ["a.txt/n.txt", "b/c.txt/n.txt"]
    (lease,) = db.lease("w", 5)
    assert lease.spec.id == "total"
    assert sorted((i.path, str(i.source)) for i in lease.spec.inputs) == [
        ("counts/a.txt/n.txt", "s3://bkt/n/a.txt/n.txt"),
        ("counts/b/c.txt/n.txt", "s3://bkt/n/b/c.txt/n.txt"),
    ]


def test_a_template_over_an_empty_collection_is_done_with_no_members(db: TaskDB) -> None:
    submit(db, SPLIT, COUNT, TOTAL)
    split_into(db)
    assert db.task("count").state is TaskState.DONE
    (lease,) = db.lease("w", 5)
    assert lease.spec.id == "total" and lease.spec.inputs == ()


def test_a_failed_member_fails_the_template_and_a_retry_runs_only_that_member(
    db: TaskDB,
) -> None:
    submit(db, SPLIT, COUNT, TOTAL)
    split_into(db, "a", "b")
    bad, good = db.lease("w", 5)
    db.fail(bad.task_id, bad.attempt, "w", "exit 3", retry=False)
    assert db.task("count").state is TaskState.FAILED
    assert "count.0" in (db.task("total").error or "")
    db.complete(
        good.task_id, good.attempt, "w", made(good.task_id, ("n.txt", "s3://bkt/n/b/n.txt"))
    )

    reply = db.retry("wf", RetryRequest(only_failed=True))
    assert reply.again == ("count", "count.0", "total")
    (again,) = db.lease("w", 5)
    assert (again.spec.id, again.attempt) == ("count.0", 2)
    db.complete("wf/count.0", 2, "w", made("count.0", ("n.txt", "s3://bkt/n/a/n.txt")))
    assert db.task("count.1").attempt == 1  # kept, not run again
    assert db.task("count").state is TaskState.DONE
    assert [lease.spec.id for lease in db.lease("w", 5)] == ["total"]


def test_a_changed_template_is_made_anew_and_a_late_report_of_an_old_member_is_refused(
    db: TaskDB,
) -> None:
    submit(db, SPLIT, COUNT)
    split_into(db, "a")
    (old,) = db.lease("w1", 5)
    reply = db.submit("wf", [parse_spec(SPLIT), parse_spec({**COUNT, "command": ["wc", "-l"]})])
    assert reply.again == ("count",)
    (new,) = db.lease("w2", 5)
    assert new.spec.id == old.spec.id == "count.0" and new.spec.command == ("wc", "-l")
    assert new.attempt > old.attempt
    with pytest.raises(StaleAttemptError):
        db.complete(
            "wf/count.0", old.attempt, "w1", made("count.0", ("n.txt", "s3://bkt/n/a/n.txt"))
        )
    db.complete("wf/count.0", new.attempt, "w2", made("count.0", ("n.txt", "s3://bkt/n/a/n.txt")))
    assert db.task("count").state is TaskState.DONE


def test_cancelling_a_template_cancels_its_members(db: TaskDB) -> None:
    submit(db, SPLIT, COUNT)
    split_into(db, "a", "b")
    db.lease("w", 1)
    assert db.cancel("count") is TaskState.CANCELLED
    assert {db.task(t).state for t in ("count.0", "count.1")} == {TaskState.CANCELLED}
    assert db.lease("w", 5) == []


def spec_error(body: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as refused:
        parse_spec(body)
    return refused.value.message


def test_each_is_refused_where_it_cannot_work() -> None:
    one_file = {**COUNT, "inputs": [{**COUNT["inputs"][0], "source": "task://split/a.txt"}]}
    assert "needs a producer's directory or glob" in spec_error(one_file)
    from_s3 = {**COUNT, "inputs": [{**COUNT["inputs"][0], "source": "s3://bkt/chunks/"}]}
    assert "needs a producer's directory or glob" in spec_error(from_s3)
    twice = {**COUNT, "inputs": [*COUNT["inputs"], {**COUNT["inputs"][0], "path": "other"}]}
    assert "second 'each' input" in spec_error(twice)
    one_key = {**COUNT, "outputs": [{"path": "n.txt", "to": "s3://bkt/n.txt"}]}
    assert "must end in '/'" in spec_error(one_key)
    assert "true or false" in spec_error({**COUNT, "inputs": [{**COUNT["inputs"][0], "each": 1}]})


def test_a_consumer_names_a_templates_outputs_below_its_runs(db: TaskDB) -> None:
    exact = {**TOTAL, "inputs": [{"source": "task://count/n.txt", "path": "n.txt"}]}
    with pytest.raises(ConfigError, match="does not declare") as refused:
        submit(db, SPLIT, COUNT, exact)
    assert "*/n.txt" in refused.value.message
    with pytest.raises(ConfigError, match=r"count\.2 is of the form"):
        submit(db, SPLIT, COUNT, {**TOTAL, "id": "count.2"})
    submit(db, SPLIT, COUNT, {**TOTAL, "inputs": [{"source": "task://count/*", "path": "all"}]})


def test_losing_a_members_only_copy_runs_that_member_again_not_the_whole_map(
    db: TaskDB,
) -> None:
    kept_on_node = {
        **COUNT,
        "outputs": [{"path": "n.txt", "to": "s3://bkt/n/", "persist": "local"}],
    }
    submit(db, SPLIT, kept_on_node, TOTAL)
    split_into(db, "a", "b")
    for lease in db.lease("w1", 5, address="w1.nodes:8766"):
        record = FileRecord(
            "n.txt",
            S3Url.parse(f"s3://bkt/n/{lease.spec.env['STAGER_ITEM']}/n.txt"),
            digest(10 + lease.attempt + len(lease.task_id) + ord(lease.task_id[-1])),
            3,
            Persist.LOCAL,
        )
        db.complete(
            lease.task_id, lease.attempt, "w1", replace(made(lease.task_id), outputs=(record,))
        )
    assert db.task("count").state is TaskState.DONE

    report = db.recover("w1")
    assert report.recomputed == ("wf/count.0", "wf/count.1")
    assert db.task("count").state is TaskState.WAITING
    assert sorted(lease.spec.id for lease in db.lease("w2", 5)) == ["count.0", "count.1"]


def test_members_outputs_are_read_when_a_task_reads_their_templates(db: TaskDB) -> None:
    unread = {**COUNT, "id": "count_alone"}  # gathered by its template, read by no task
    submit(db, SPLIT, COUNT, unread, TOTAL)
    (split,) = db.lease("w", 5)
    assert split.outputs_read  # the members read its chunks
    db.complete("wf/split", split.attempt, "w", made("split", ("chunks/a", "s3://bkt/chunks/a")))
    read_by = {lease.spec.id: lease.outputs_read for lease in db.lease("w", 5)}
    assert read_by == {"count.0": True, "count_alone.0": False}
