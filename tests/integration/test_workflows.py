"""Workflows as a user writes, reruns and debugs them, through the command line.

A real dispatcher and worker, the real S3 server, `python -m stager` as a
real process (not on a terminal, as in a batch job or CI).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stager.locations import S3Url
from stager.objectstore import ObjectStore
from tests.integration.test_dispatch import (  # noqa: F401
    ClusterFactory,
    Stager,
    cli_of,
    make_cluster,
)
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.protocol import TaskState


@pytest.fixture
def cluster(make_cluster: ClusterFactory) -> LocalCluster:  # noqa: F811
    started = make_cluster()
    started.add_worker("w1")
    return started


@pytest.fixture
def stager(cluster: LocalCluster, run_cli: Any) -> Stager:
    return cli_of(cluster, run_cli)


def pipeline(prefix: S3Url, *, broken: bool) -> dict[str, Any]:
    """Two producers, a step that fails while ``broken``, and a gather downstream of it."""
    out = str(prefix.child("out/"))
    return {
        "name": "run1",
        "defaults": {"shell": True, "results": str(prefix.child("results/"))},
        "tasks": [
            {
                "id": f"make-{n}",
                "command": f"echo part {n} > part.txt",
                "outputs": [{"path": "part.txt", "to": f"{out}make-{n}.txt"}],
            }
            for n in range(2)
        ]
        + [
            {
                "id": "check",
                "command": "printf 'checking a\\nchecking b\\nbad input: part 1\\n' >&2; exit 3"
                if broken
                else "cat a.txt b.txt > both.txt",
                "inputs": [
                    {"source": "task://make-0/part.txt", "path": "a.txt"},
                    {"source": "task://make-1/part.txt", "path": "b.txt"},
                ],
                "outputs": [{"path": "both.txt", "to": f"{out}both.txt"}],
            },
            {
                "id": "gather",
                "command": "wc -l < both.txt > count.txt",
                "inputs": [{"source": "task://check/both.txt", "path": "both.txt"}],
                "outputs": [{"path": "count.txt", "to": f"{out}count.txt"}],
            },
        ],
    }


def write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_failure_is_explained_fixed_and_rerun_running_only_what_changed(
    cluster: LocalCluster,
    stager: Stager,
    prefix: S3Url,
    store: ObjectStore,
    tmp_path: Path,
    raw_client: Any,
) -> None:
    flow = write(tmp_path / "run1.yaml", pipeline(prefix, broken=True))
    failed = stager("submit", str(flow), "--wait")
    assert failed.returncode == 10, failed.stderr
    # Not on a terminal: progress lines and a summary, then the one-line error.
    assert re.search(r"^workflow run1: \d/4 ended \(\d done, \d failed\)", failed.stderr, re.M)
    assert "workflow run1: 2 done, 2 failed, 0 cancelled" in failed.stderr
    assert "stager status run1" in failed.stderr.strip().splitlines()[-1]

    status = stager("status", "run1")
    assert status.returncode == 0, status.stderr
    assert "failed     check" in status.stdout and "exited with code 3" in status.stdout
    assert "failed     gather" in status.stdout and "producer check failed" in status.stdout

    logs = stager("logs", "check")
    assert logs.returncode == 0, logs.stderr
    assert "* attempt 1 on w1" in logs.stdout and "failed: " in logs.stdout
    assert "--- stderr of attempt 1 ---\nchecking a\nchecking b\nbad input: part 1" in logs.stdout
    tail = stager("logs", "check", "--tail", "1")
    assert "--- last 1 lines of stderr of attempt 1 ---\nbad input: part 1\n" in tail.stdout
    assert "checking" not in tail.stdout
    as_json = json.loads(stager("logs", "check", "--json", "--tail", "2").stdout)
    assert as_json["logs"] == {"stderr": "checking b\nbad input: part 1\n"}
    assert as_json["attempts"][0]["outcome"] == "failed"
    (log_url,) = as_json["attempts"][0]["logs"]
    gone = S3Url.parse(log_url)
    raw_client.delete_object(Bucket=gone.bucket, Key=gone.key)  # a lifecycle rule took it
    after = stager("logs", "check")
    assert after.returncode == 0 and f"(no longer in S3: {log_url})" in after.stdout

    page = tmp_path / "run1.html"
    reported = stager("report", "run1", "-o", str(page))
    assert reported.returncode == 0, reported.stderr
    text = page.read_text()
    assert "<h2>Failed tasks (2)</h2>" in text and "exited with code 3" in text
    assert '<section id="timeline">' in text and "<svg" in text

    write(flow, pipeline(prefix, broken=False))
    rerun = stager("submit", str(flow), "--wait")
    assert rerun.returncode == 0, rerun.stderr
    assert "workflow run1: 0 new tasks, 2 to run again, 2 kept from before" in rerun.stderr
    assert "workflow run1: 4 done, 0 failed" in rerun.stderr
    runs = {name: len(cluster.client.assignments(name)) for name in ("make-0", "make-1")}
    assert runs == {"make-0": 1, "make-1": 1}  # the producers did not run again
    assert store.get_bytes(prefix.child("out/count.txt")) == b"2\n"

    again = stager("submit", str(flow))
    assert "0 new tasks, 0 to run again, 4 kept from before" in again.stderr


def test_retry_runs_failed_tasks_again(
    cluster: LocalCluster, stager: Stager, prefix: S3Url, tmp_path: Path
) -> None:
    marker = tmp_path / "fixed"
    document = pipeline(prefix, broken=False)
    document["tasks"][2]["command"] = f"test -e '{marker}' && cat a.txt b.txt > both.txt"
    flow = write(tmp_path / "run1.yaml", document)
    assert stager("submit", str(flow), "--wait").returncode == 10
    marker.touch()  # what was missing (a licence, a mount) is there now
    retried = stager("retry", "run1", "--wait")
    assert retried.returncode == 0, retried.stderr
    assert "2 tasks to run again" in retried.stderr
    assert cluster.client.task("gather").state is TaskState.DONE
    unknown = stager("retry", "run1", "make-0")
    assert unknown.returncode == 15 and "is not a failed or cancelled task" in unknown.stderr


def test_mistakes_are_refused_at_submit_with_one_clear_line(
    stager: Stager, prefix: S3Url, tmp_path: Path
) -> None:
    typo = pipeline(prefix, broken=False)
    typo["defualts"] = typo.pop("defaults")
    done = stager("submit", str(write(tmp_path / "typo.yaml", typo)))
    assert done.returncode == 2
    assert "unknown key 'defualts' (did you mean 'defaults'?)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

    wrong = pipeline(prefix, broken=False)
    wrong["tasks"][3]["inputs"][0]["source"] = "task://check/bothh.txt"
    done = stager("submit", str(write(tmp_path / "wrong.yaml", wrong)))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "task gather: inputs[0] names task://check/bothh.txt, which task check does not" in (
        done.stderr
    )
    assert "its outputs: both.txt" in done.stderr and "STAGER_" not in done.stderr

    bare = {"tasks": [{"id": "t", "command": [True], "results": str(prefix)}]}
    done = stager("submit", str(write(tmp_path / "bare.yaml", bare)))
    assert done.returncode == 2 and "must be a string, not true (in YAML, quote it" in (done.stderr)
    bad_id = {"tasks": [{"id": "a b", "command": ["true"], "results": str(prefix)}]}
    done = stager("submit", str(write(tmp_path / "id.yaml", bad_id)))
    assert done.returncode == 2 and "'a b' is not" in done.stderr


def test_a_command_that_cannot_start_fails_at_once(
    cluster: LocalCluster, stager: Stager, prefix: S3Url, tmp_path: Path
) -> None:
    body = {
        "name": "typo",
        "tasks": [{"id": "t", "command": ["pythn3", "-V"], "results": str(prefix)}],
    }
    done = stager("submit", str(write(tmp_path / "typo.yaml", body)), "--wait")
    assert done.returncode == 10
    info = cluster.client.task("t")
    assert info.state is TaskState.FAILED and info.attempt == 1  # not retried
    assert "cannot start 'pythn3'" in (info.error or "")


def test_a_fan_in_over_forty_producers_and_s3_collections_in_one_line_each(
    cluster: LocalCluster, stager: Stager, prefix: S3Url, raw_client: Any, tmp_path: Path
) -> None:
    # Reference data written by another tool: no stager metadata, odd names.
    for key, body in (
        ("a b \u00fc.txt", b"alpha\n"),
        ("sub/", b""),  # a "folder" a console made
        ("sub/c.txt", b"gamma\n"),
        ("d.bin", b"x"),
    ):
        raw_client.put_object(Bucket=prefix.bucket, Key=f"{prefix.key}ref/{key}", Body=body)
    out = prefix.child("out/")
    flow = {
        "name": "fanin",
        "defaults": {"shell": True, "results": str(prefix.child("results/"))},
        "tasks": [
            {
                "id": f"producer-{n:02d}",
                "command": f"mkdir out; echo {n} > out/n.txt; echo x > out/x.txt",
                "outputs": [{"path": "out/", "to": f"{out}p{n:02d}/"}],
            }
            for n in range(40)
        ]
        + [
            {
                "id": "gather",
                "command": "find all -type f | sort > files.txt; cat all/*/n.txt | sort -n "
                "| tr '\\n' ' ' > numbers.txt; ls -R ref texts > refs.txt",
                "inputs": [
                    {"source": "task://producer-*/out/", "path": "all/"},
                    {"source": str(prefix.child("ref/")), "path": "ref"},
                    {"source": str(prefix.child("ref/*.txt")), "path": "texts"},
                ],
                "outputs": [
                    {"path": "files.txt", "to": f"{out}files.txt"},
                    {"path": "numbers.txt", "to": f"{out}numbers.txt"},
                    {"path": "refs.txt", "to": f"{out}refs.txt"},
                ],
            }
        ],
    }
    done = stager("submit", str(write(tmp_path / "fanin.yaml", flow)), "--wait")
    assert done.returncode == 0, cluster.client.task("gather").error
    files = raw_client.get_object(Bucket=out.bucket, Key=out.key + "files.txt")["Body"].read()
    assert len(files.decode().splitlines()) == 80  # 40 producers x 2 files
    assert "all/producer-07/n.txt" in files.decode()
    numbers = raw_client.get_object(Bucket=out.bucket, Key=out.key + "numbers.txt")["Body"]
    assert numbers.read().decode().split() == [str(n) for n in range(40)]
    refs = raw_client.get_object(Bucket=out.bucket, Key=out.key + "refs.txt")["Body"].read()
    listing = refs.decode()
    assert "a b \u00fc.txt" in listing and "d.bin" in listing and "c.txt" in listing
    texts = listing.split("texts:")[1]
    assert "d.bin" not in texts  # the glob took the .txt objects only
    gather = cluster.client.task("gather")
    assert gather.result is not None and len(gather.result.inputs) == 80 + 3 + 2
    figures = json.loads(stager("status", "fanin", "--json").stdout)
    by_id = {task["id"]: task for task in figures["tasks"]}
    assert len(by_id) == 41 and by_id["gather"]["node"] == "w1"
    moved = by_id["gather"]["bytes_from_s3"] + by_id["gather"]["bytes_from_cache"]
    assert moved == sum(record.size for record in gather.result.inputs)
    assert {"stage_in", "run", "stage_out"} <= by_id["gather"]["seconds"].keys()
    assert figures["nodes"]["w1"]["tasks"] == 41 and figures["nodes"]["w1"]["run_s"] > 0


def test_a_collection_beyond_its_bound_fails_the_task_with_a_clear_reason(
    cluster: LocalCluster, stager: Stager, prefix: S3Url, raw_client: Any, tmp_path: Path
) -> None:
    for n in range(3):
        raw_client.put_object(Bucket=prefix.bucket, Key=f"{prefix.key}many/{n}", Body=b"x")
    flow = {
        "name": "bounded",
        "tasks": [
            {
                "id": "reader",
                "command": ["ls", "in"],
                "results": str(prefix.child("results/")),
                "inputs": [{"source": str(prefix.child("many/")), "path": "in", "max_count": 2}],
            }
        ],
    }
    assert stager("submit", str(write(tmp_path / "b.yaml", flow)), "--wait").returncode == 10
    info = cluster.client.task("reader")
    assert info.state is TaskState.FAILED and info.attempt == 1
    assert "holds 3 files, more than its max_count 2" in (info.error or "")


def test_a_fan_out_over_files_known_only_once_their_producer_ran(
    cluster: LocalCluster, stager: Stager, prefix: S3Url, raw_client: Any, tmp_path: Path
) -> None:
    out = prefix.child("out/")
    flow = {
        "name": "fanout",
        "defaults": {"shell": True, "results": str(prefix.child("results/"))},
        "tasks": [
            {
                "id": "split",  # 23 lines in chunks of 5: 5 files, plus one odd name
                "command": "mkdir chunks; seq 1 23 | split -l 5 - chunks/part-;"
                " cp chunks/part-aa 'chunks/\u00fc a.txt'",
                "outputs": [{"path": "chunks/", "to": f"{out}chunks/"}],
            },
            {
                "id": "count",
                "command": 'wc -l < chunk.txt > n.txt; printf %s "$STAGER_ITEM" > item.txt',
                "inputs": [{"source": "task://split/chunks/", "path": "chunk.txt", "each": True}],
                "outputs": [
                    {"path": "n.txt", "to": f"{out}n/"},
                    {"path": "item.txt", "to": f"{out}n/"},
                ],
            },
            {
                "id": "total",
                "command": "awk '{s += $1} END {print s}' counts/*/n.txt > total.txt",
                "inputs": [{"source": "task://count/*/n.txt", "path": "counts"}],
                "outputs": [{"path": "total.txt", "to": f"{out}total.txt"}],
            },
        ],
    }
    path = write(tmp_path / "fanout.yaml", flow)
    done = stager("submit", str(path), "--wait")
    assert done.returncode == 0, done.stderr
    total = raw_client.get_object(Bucket=out.bucket, Key=out.key + "total.txt")["Body"].read()
    assert total == b"28\n"  # 23 lines, and the copy of the first chunk's 5
    items = ["part-aa", "part-ab", "part-ac", "part-ad", "part-ae", "\u00fc a.txt"]
    for item in items:  # each run wrote below its own folder, and knew its file
        body = raw_client.get_object(Bucket=out.bucket, Key=f"{out.key}n/{item}/item.txt")["Body"]
        assert body.read().decode() == item
    figures = json.loads(stager("status", "fanout", "--json").stdout)
    ids = sorted(task["id"] for task in figures["tasks"])
    assert ids == sorted(["split", "count", "total", *(f"count.{n}" for n in range(6))])
    assert figures["counts"]["done"] == 9
    again = stager("submit", str(path), "--wait")  # nothing changed: nothing runs
    assert again.returncode == 0 and "3 kept" in again.stdout + again.stderr
