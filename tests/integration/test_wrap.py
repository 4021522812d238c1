"""The job wrapper against the real S3 server, with real commands."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fsd.cache import NodeCache
from stager.digest import digest_bytes
from stager.errors import (
    CommandFailedError,
    ConfigError,
    DiskFullError,
    IntegrityError,
    MissingOutputError,
    TaskCancelledError,
    TaskTimeoutError,
    UnsafePathError,
)
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server
from tests.helpers import count_requests, files_under
from tests.integration.test_cli import assert_one_line_error
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.result import ResultManifest
from worker_hooks.wrap.bundle import remove_tree
from worker_hooks.wrap.memo import recorded_results, write_segment
from worker_hooks.wrap.node import Node
from worker_hooks.wrap.wrapper import WrapOptions, wrap_task

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


@pytest.fixture
def node(tmp_path: Path, store: ObjectStore) -> Node:
    cache = NodeCache(tmp_path / "cache", quota_bytes=512 * MiB)
    return Node(cache=cache, store=store, sandbox_dir=tmp_path / "sandboxes")


def put(store: ObjectStore, url: S3Url, data: bytes) -> None:
    store.put_bytes(url, data)


def spec_for(prefix: S3Url, command: str, **extra: Any) -> Any:
    body = {
        "id": "t1",
        "command": command,
        "shell": True,
        "results": str(prefix.child("results/")),
        **extra,
    }
    return parse_spec(body)


def test_file_directory_and_glob_outputs_become_durable(
    node: Node, store: ObjectStore, prefix: S3Url
) -> None:
    reference = os.urandom(7 * MiB)  # multipart on the way in
    put(store, prefix.child("in/ref.bin"), reference)
    spec = spec_for(
        prefix,
        "mkdir -p dir/sub plots && cat ref.bin > copy.bin && echo a > dir/x && echo b > dir/sub/y"
        " && echo p1 > plots/1.png && echo p2 > plots/2.png && echo skip > plots/n.txt",
        inputs=[{"source": str(prefix.child("in/ref.bin")), "path": "ref.bin"}],
        outputs=[
            {"path": "copy.bin", "to": str(prefix.child("out/copy.bin"))},
            {"path": "dir/", "to": str(prefix.child("out/dir/"))},
            {"path": "plots/*.png", "to": str(prefix.child("out/plots/"))},
        ],
    )
    result = wrap_task(spec, node)

    assert not result.memoized
    keys = {str(r.url).removeprefix(str(prefix)): r.digest for r in result.manifest.outputs}
    assert keys == {
        "out/copy.bin": digest_bytes(reference),
        "out/dir/x": digest_bytes(b"a\n"),
        "out/dir/sub/y": digest_bytes(b"b\n"),
        "out/plots/1.png": digest_bytes(b"p1\n"),
        "out/plots/2.png": digest_bytes(b"p2\n"),
    }
    for record in result.manifest.outputs:
        info = store.head(record.url)
        assert info is not None and info.digest == record.digest and info.size == record.size
    stored = ResultManifest.from_bytes(store.get_bytes(result.result_url))
    assert stored == result.manifest
    assert stored.inputs[0].digest == digest_bytes(reference)
    assert stored.logs == ()  # a silent command leaves no log objects
    # The sandbox is gone, nothing stays pinned, and the output is a cache hit now.
    assert list((node.sandbox_dir).iterdir()) == []
    assert node.cache.stats().pinned_entries == 0
    assert node.cache.lookup(digest_bytes(reference)) is not None


def test_failing_command_uploads_logs_but_no_outputs_and_no_result(
    node: Node, store: ObjectStore, prefix: S3Url
) -> None:
    spec = spec_for(
        prefix,
        "echo made > out.txt; echo oops >&2; exit 3",
        outputs=[{"path": "out.txt", "to": str(prefix.child("out/out.txt"))}],
    )
    with pytest.raises(CommandFailedError, match="exited with code 3") as failure:
        wrap_task(spec, node)
    stderr_url = failure.value.hint.rsplit(" ", 1)[-1]
    assert store.get_bytes(S3Url.parse(stderr_url)) == b"oops\n"
    assert store.head(prefix.child("out/out.txt")) is None
    assert not [
        i for i in store.list(prefix.child("results/")) if i.url.key.endswith("result.json")
    ]
    assert list(node.sandbox_dir.iterdir()) == []


def test_keep_failed_keeps_the_sandbox(node: Node, prefix: S3Url) -> None:
    spec = spec_for(prefix, "echo partial > half.txt; kill -KILL $$")
    with pytest.raises(CommandFailedError, match="SIGKILL"):
        wrap_task(spec, node, WrapOptions(keep_failed=True))
    (kept,) = node.sandbox_dir.iterdir()
    assert (kept / "work" / "half.txt").read_text() == "partial\n"


def test_missing_output(node: Node, store: ObjectStore, prefix: S3Url) -> None:
    spec = spec_for(
        prefix,
        "echo one > a.txt",
        outputs=[
            {"path": "a.txt", "to": str(prefix.child("out/a.txt"))},
            {"path": "b.txt", "to": str(prefix.child("out/b.txt"))},
        ],
    )
    with pytest.raises(MissingOutputError, match=r"b\.txt"):
        wrap_task(spec, node)
    assert store.head(prefix.child("out/a.txt")) is None


def test_output_symlink_out_of_the_sandbox_is_refused(
    node: Node, store: ObjectStore, prefix: S3Url
) -> None:
    spec = spec_for(
        prefix,
        "ln -s /etc/hostname leak.txt",
        outputs=[{"path": "leak.txt", "to": str(prefix.child("out/leak.txt"))}],
    )
    with pytest.raises(UnsafePathError, match="outside the sandbox") as refused:
        wrap_task(spec, node)
    assert store.head(prefix.child("out/leak.txt")) is None
    assert "'..'" not in refused.value.hint and "link" in refused.value.hint


def test_memoized_rerun_makes_no_uploads_and_force_reruns(
    node: Node, store: ObjectStore, prefix: S3Url, tmp_path: Path
) -> None:
    put(store, prefix.child("in/x"), b"input")
    marker = tmp_path / "runs"
    spec = spec_for(
        prefix,
        f"echo run >> {marker}; cat x > y",
        inputs=[{"source": str(prefix.child("in/x")), "path": "x"}],
        outputs=[{"path": "y", "to": str(prefix.child("out/y"))}],
    )
    first = wrap_task(spec, node)
    calls = count_requests(store)
    again = wrap_task(spec, node)
    assert again.memoized and again.manifest == first.manifest
    assert calls["PutObject"] == 0 and calls["CreateMultipartUpload"] == 0
    assert marker.read_text() == "run\n"
    forced = wrap_task(spec, node, WrapOptions(force=True))
    assert not forced.memoized and marker.read_text() == "run\nrun\n"
    # A changed input is a different task: it runs again.
    put(store, prefix.child("in/x"), b"other input")
    changed = wrap_task(spec, node)
    assert not changed.memoized and changed.result_url != first.result_url
    assert store.get_bytes(prefix.child("out/y")) == b"other input"


def test_a_changed_input_of_the_same_size_is_not_memoized(
    node: Node, store: ObjectStore, prefix: S3Url
) -> None:
    put(store, prefix.child("in/x"), b"AAAA")
    spec = spec_for(
        prefix,
        "cat x > y",
        inputs=[{"source": str(prefix.child("in/x")), "path": "x", "size": 4}],
        outputs=[{"path": "y", "to": str(prefix.child("out/y"))}],
    )
    wrap_task(spec, node)
    put(store, prefix.child("in/x"), b"BBBB")
    again = wrap_task(spec, node)
    assert not again.memoized
    assert store.get_bytes(prefix.child("out/y")) == b"BBBB"


def test_an_input_larger_than_its_spec_says_is_refused_and_never_cached(
    node: Node, prefix: S3Url, raw_client: Any
) -> None:
    """The spec's size picks a single small GET; the bytes that came are checked all
    the same: another tool replaced the object with a larger one."""
    small = b"s" * 1024
    spec = spec_for(
        prefix,
        "cat x > y",
        inputs=[
            {
                "source": str(prefix.child("in/x")),
                "path": "x",
                "digest": str(digest_bytes(small)),
                "size": len(small),
            }
        ],
        outputs=[{"path": "y", "to": str(prefix.child("out/y"))}],
    )
    raw_client.put_object(Bucket=prefix.bucket, Key=f"{prefix.key}in/x", Body=os.urandom(2 * MiB))
    with pytest.raises(IntegrityError) as caught:
        wrap_task(spec, node)
    assert "\n" not in caught.value.one_line()
    assert node.cache.lookup(digest_bytes(small)) is None
    assert files_under(node.cache.root / "tmp") == []  # no partial bytes left behind
    assert node.store.head(prefix.child("out/y")) is None  # the command never ran


def test_a_task_needing_more_scratch_than_is_free_fails_before_running(
    node: Node, prefix: S3Url, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    spec = spec_for(prefix, f"touch {marker}", scratch_bytes=2**59)
    with pytest.raises(DiskFullError, match=r"needs .* of scratch"):
        wrap_task(spec, node)
    assert not marker.exists()
    assert list(node.sandbox_dir.iterdir()) == []


def test_a_cancelled_task_stops_and_records_nothing(
    node: Node, store: ObjectStore, prefix: S3Url, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    spec = spec_for(
        prefix,
        f"echo noisy; touch {started}; sleep 60; echo done > out.txt",
        outputs=[{"path": "out.txt", "to": str(prefix.child("out/out.txt"))}],
    )
    cancel = threading.Event()

    def cancel_once_running() -> None:
        while not started.exists():
            time.sleep(0.05)
        cancel.set()

    threading.Thread(target=cancel_once_running, daemon=True).start()
    began = time.monotonic()
    with pytest.raises(TaskCancelledError):
        wrap_task(spec, node, WrapOptions(cancel=cancel))
    assert time.monotonic() - began < 50  # stopped, not run to its end
    assert list(store.list(prefix)) == []  # no logs, no outputs, no result
    assert node.cache.stats().pinned_entries == 0


def test_a_damaged_recorded_result_is_reported_and_force_replaces_it(
    node: Node, store: ObjectStore, prefix: S3Url
) -> None:
    spec = spec_for(prefix, "echo x > y", outputs=[{"path": "y", "to": str(prefix.child("y"))}])
    first = wrap_task(spec, node)
    store.put_bytes(first.result_url, b"{ not a result")
    with pytest.raises(IntegrityError, match="unreadable") as failure:
        wrap_task(spec, node)
    assert "--force" in failure.value.hint
    forced = wrap_task(spec, node, WrapOptions(force=True))
    assert ResultManifest.from_bytes(store.get_bytes(forced.result_url)) == forced.manifest


def test_timeout_kills_the_command_and_its_children(
    node: Node, prefix: S3Url, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    spec = spec_for(
        prefix,
        f"sleep 300 & echo $! > {pids}; sh -c 'sleep 300' & echo $! >> {pids}; wait",
        timeout_s=1,
    )
    node = Node(cache=node.cache, store=node.store, sandbox_dir=node.sandbox_dir, kill_grace_s=1)
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError, match="timeout of 1 s"):
        wrap_task(spec, node)
    assert time.monotonic() - started < 60
    # SIGKILL went to the whole group before wrap_task returned; allow the
    # kernel a moment to finish them on a loaded machine.
    children = [int(pid) for pid in pids.read_text().split()]
    deadline = time.monotonic() + 30
    while any(is_running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in children if is_running(pid)] == []


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for PID 1 to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def make_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in members:
            info.size = len(data) if data is not None else 0
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file_member(name: str, data: bytes, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def test_bundle_is_extracted_once_and_shared(node: Node, store: ObjectStore, prefix: S3Url) -> None:
    bundle = make_tar([file_member("bin/tool", b"#!/bin/sh\necho tool says $1\n")])
    put(store, prefix.child("apps/tool.tar.gz"), bundle)
    for n in (1, 2):
        spec = spec_for(
            prefix,
            f"app/bin/tool {n} > out.txt",
            id=f"t{n}",
            bundle={"source": str(prefix.child("apps/tool.tar.gz"))},
            outputs=[{"path": "out.txt", "to": str(prefix.child(f"out/{n}.txt"))}],
        )
        wrap_task(spec, node)
        assert store.get_bytes(prefix.child(f"out/{n}.txt")) == f"tool says {n}\n".encode()
    (extracted,) = (p for p in node.bundles_dir.iterdir() if p.is_dir())
    assert extracted.name == digest_bytes(bundle).hex


@pytest.mark.parametrize(
    "member",
    [
        file_member("../escaped.txt", b"x"),
        file_member("/tmp/absolute.txt", b"x"),
        (lambda i: (setattr(i, "type", tarfile.SYMTYPE), setattr(i, "linkname", "/etc"), i)[2])(
            tarfile.TarInfo("etc-link")
        ),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_tar_slip_bundle_is_refused_with_nothing_written(
    node: Node, store: ObjectStore, prefix: S3Url, tmp_path: Path, member: Any
) -> None:
    if isinstance(member, tarfile.TarInfo):
        member = (member, None)
    bundle = make_tar([file_member("ok.txt", b"fine"), member])
    put(store, prefix.child("apps/evil.tar.gz"), bundle)
    spec = spec_for(prefix, "true", bundle={"source": str(prefix.child("apps/evil.tar.gz"))})
    with pytest.raises(UnsafePathError) as refused:
        wrap_task(spec, node)
    assert refused.value.message.count(member[0].name) == 1  # named once, not twice
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/absolute.txt").exists()
    assert not node.bundles_dir.exists() or list(node.bundles_dir.iterdir()) == []


def test_a_bundle_that_is_not_a_tar_archive_is_one_line(
    node: Node, store: ObjectStore, prefix: S3Url
) -> None:
    put(store, prefix.child("apps/notes.txt"), b"this is not an archive\n")
    spec = spec_for(prefix, "true", bundle={"source": str(prefix.child("apps/notes.txt"))})
    with pytest.raises(ConfigError, match="is not a readable tar archive") as refused:
        wrap_task(spec, node)
    assert "\n" not in refused.value.one_line() and "gzip" in refused.value.hint


def wrap_env(tmp_path: Path) -> dict[str, str]:
    return {
        "STAGER_CACHE_DIR": str(tmp_path / "cache"),
        "STAGER_SANDBOX_DIR": str(tmp_path / "sandboxes"),
    }


def test_inline_form_from_the_command_line(
    run_cli: Any, store: ObjectStore, prefix: S3Url, tmp_path: Path
) -> None:
    put(store, prefix.child("in/ref.fa"), b">chr1\nACGT\n")
    args = [
        "wrap",
        "--in",
        f"{prefix.child('in/ref.fa')}=ref.fa",
        "--out",
        f"result.txt={prefix.child('out/result.txt')}",
        "--",
        "sh",
        "-c",
        "wc -c < ref.fa > result.txt",
    ]
    done = run_cli(*args, env=wrap_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "1 outputs durable" in done.stderr
    assert store.get_bytes(prefix.child("out/result.txt")).strip() == b"11"
    again = run_cli(*args, env=wrap_env(tmp_path))
    assert again.returncode == 0 and "already done" in again.stderr


@pytest.mark.parametrize(
    ("command", "code", "text"),
    [
        ("exit 4", 10, "exited with code 4"),
        ("true", 11, "did not write output out.txt"),
        ("sleep 30", 12, "timeout"),
    ],
)
def test_exit_codes_from_the_command_line(
    run_cli: Any, prefix: S3Url, tmp_path: Path, command: str, code: int, text: str
) -> None:
    spec = {
        "id": "cli",
        "command": command,
        "shell": True,
        "timeout_s": 1,
        "outputs": [{"path": "out.txt", "to": str(prefix.child("out.txt"))}],
    }
    (tmp_path / "task.json").write_text(json.dumps(spec))
    done = run_cli(
        "wrap",
        "--spec",
        str(tmp_path / "task.json"),
        env={**wrap_env(tmp_path), "STAGER_KILL_GRACE_S": "1"},
    )
    assert_one_line_error(done, code, text)


@pytest.mark.parametrize(
    ("field", "value", "names"),
    [
        ("inputs", [{"source": "s3://bkt/k", "path": "../../etc/passwd"}], "inputs[0].path"),
        ("inputs", [{"source": "s3://bkt/k", "path": "/etc/passwd"}], "inputs[0].path"),
        ("outputs", [{"path": "a/../../x", "to": "s3://bkt/x"}], "outputs[0].path"),
        ("bundle", {"source": "s3://bkt/k.tar", "path": ".."}, "bundle.path"),
    ],
)
def test_path_traversal_in_a_spec_is_refused_before_any_io(
    run_cli: Any, tmp_path: Path, field: str, value: Any, names: str
) -> None:
    spec = {"id": "evil", "command": ["true"], field: value}
    (tmp_path / "task.json").write_text(json.dumps(spec))
    done = run_cli("wrap", "--spec", str(tmp_path / "task.json"), env=wrap_env(tmp_path))
    assert_one_line_error(done, 2, names)
    assert not (tmp_path / "sandboxes").exists() and not (tmp_path / "cache").exists()
    assert files_under(tmp_path) == [tmp_path / "task.json"]


def test_a_spec_file_with_inline_flags_is_refused(run_cli: Any, tmp_path: Path) -> None:
    (tmp_path / "task.json").write_text(json.dumps({"id": "t", "command": ["true"]}))
    done = run_cli(
        "wrap", "--spec", str(tmp_path / "task.json"), "--timeout", "5", env=wrap_env(tmp_path)
    )
    assert_one_line_error(done, 2, "cannot be combined with --timeout")


def test_an_input_on_the_nfs_head_is_read_from_there(
    run_cli: Any, store: ObjectStore, prefix: S3Url, tmp_path: Path
) -> None:
    data = b"shared reference\n" * 1000
    url = prefix.child("in/ref.txt")
    digest = store.put_bytes(url, data)
    head = tmp_path / "nfs-head"
    filled = run_cli("cache", "--cache-dir", str(head), "--tier", "shared", "fetch", str(url))
    assert filled.returncode == 0, filled.stderr
    store.delete(url)  # from now on only the head holds the bytes
    spec = {
        "id": "from-head",
        "command": "wc -c < ref.txt > n.txt",
        "shell": True,
        "inputs": [
            {"source": str(url), "path": "ref.txt", "digest": str(digest), "size": len(data)}
        ],
        "outputs": [{"path": "n.txt", "to": str(prefix.child("out/n.txt"))}],
    }
    (tmp_path / "task.json").write_text(json.dumps(spec))
    wrap = ["wrap", "--spec", str(tmp_path / "task.json")]

    assert_one_line_error(run_cli(*wrap, env=wrap_env(tmp_path)), 3, "no such object")
    ledger = (head / "ledger.json").stat().st_mtime_ns
    done = run_cli(*wrap, "--nfs-head", str(head), env=wrap_env(tmp_path))
    assert done.returncode == 0, done.stderr
    # A reader of the shared head neither locks it nor recounts it (many nodes open it).
    assert (head / "ledger.json").stat().st_mtime_ns == ledger
    assert store.get_bytes(prefix.child("out/n.txt")).strip() == str(len(data)).encode()
    assert NodeCache(tmp_path / "cache", quota_bytes=MiB).lookup(digest) is not None


def test_an_nfs_head_that_is_not_a_cache_is_refused(run_cli: Any, tmp_path: Path) -> None:
    (tmp_path / "unmounted").mkdir()
    done = run_cli(
        "wrap", "--nfs-head", str(tmp_path / "unmounted"), "--", "true", env=wrap_env(tmp_path)
    )
    assert_one_line_error(done, 2, "is not a stager cache")
    assert list((tmp_path / "unmounted").iterdir()) == []


def test_the_command_gets_a_clean_environment_and_only_the_variables_it_asks_for(
    node: Node, store: ObjectStore, prefix: S3Url, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrapper-secret-1")
    monkeypatch.setenv("STAGER_DISPATCHER_TOKEN", "wrapper-secret-2")
    monkeypatch.setenv("RESEARCH_DB", "/data/db")
    monkeypatch.setenv("SITE_LICENSE", "lic-42")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    script = "env > out.txt; echo tmp > $TMPDIR/probe; cat $TMPDIR/probe >> out.txt"
    spec = spec_for(
        prefix,
        script,
        env={"MINE": "set-by-spec"},
        pass_env=["RESEARCH_DB", "NOT_SET_ANYWHERE"],
        outputs=[{"path": "out.txt", "to": str(prefix.child("env.txt"))}],
    )
    wrap_task(spec, node, WrapOptions(pass_env=("SITE_LICENSE",)))
    lines = store.get_bytes(prefix.child("env.txt")).decode().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    assert "wrapper-secret" not in "\n".join(lines)
    assert env["MINE"] == "set-by-spec" and env["RESEARCH_DB"] == "/data/db"
    assert env["SITE_LICENSE"] == "lic-42" and env["LC_ALL"] == "C.UTF-8"
    assert "NOT_SET_ANYWHERE" not in env and env["PATH"]
    assert env["TMPDIR"].startswith(str(node.sandbox_dir)) and lines[-1] == "tmp"
    assert env["STAGER_TASK_ID"] == "t1"


AS_NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
TAMPER = (
    "chmod -R u+w app/ 2>/dev/null; rm -f app/bin/tool; "
    "printf '#!/bin/sh\\necho TAMPERED\\n' > app/bin/tool; chmod +x app/bin/tool; true"
)


def test_a_task_cannot_change_what_another_task_sees_of_a_bundle(
    node: Node, store: ObjectStore, prefix: S3Url
) -> None:
    bundle = make_tar([file_member("bin/tool", b"#!/bin/sh\necho tool says $1\n")])
    put(store, prefix.child("apps/tool.tar.gz"), bundle)
    app = {"source": str(prefix.child("apps/tool.tar.gz"))}
    wrap_task(spec_for(prefix, TAMPER, id="evil", bundle=app), node)
    spec = spec_for(
        prefix,
        "app/bin/tool 2 > out.txt",
        id="victim",
        bundle=app,
        outputs=[{"path": "out.txt", "to": str(prefix.child("out/victim.txt"))}],
    )
    wrap_task(spec, node)
    assert store.get_bytes(prefix.child("out/victim.txt")) == b"tool says 2\n"
    (extracted,) = (p for p in node.bundles_dir.iterdir() if p.is_dir())
    assert extracted.stat().st_mode & 0o777 == 0o555  # folders are read-only too


def test_a_non_root_task_cannot_change_a_bundle_either(
    store: ObjectStore, prefix: S3Url, s3_server: LocalS3Server
) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the wrapper as another user")
    bundle = make_tar([file_member("bin/tool", b"#!/bin/sh\necho tool says $1\n")])
    put(store, prefix.child("apps/tool.tar.gz"), bundle)
    app = {"source": str(prefix.child("apps/tool.tar.gz"))}
    base = Path(tempfile.mkdtemp(prefix="stager-nobody-"))
    try:
        base.chmod(0o777)
        env = {
            **os.environ,
            **s3_server.env(),
            "PYTHONPATH": str(REPO),
            "HOME": str(base),
            "STAGER_STATE_DIR": str(base / "state"),
            "STAGER_CACHE_DIR": str(base / "cache"),
            "STAGER_SANDBOX_DIR": str(base / "sandboxes"),
        }
        results = str(prefix.child("results/"))
        for task_id, command in (("evil", TAMPER), ("victim", "app/bin/tool 2 > out.txt")):
            body = {"id": task_id, "command": command, "shell": True, "bundle": app}
            body["results"] = results
            body["outputs"] = [{"path": "out.txt", "to": str(prefix.child(f"out/{task_id}"))}]
            if task_id == "evil":
                body["command"] = f"{command}; echo > out.txt"
            spec = base / f"{task_id}.json"
            spec.write_text(json.dumps(body))
            done = subprocess.run(
                [*AS_NOBODY, sys.executable, "-m", "stager", "wrap", "--spec", str(spec)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
        assert store.get_bytes(prefix.child("out/victim")) == b"tool says 2\n"
    finally:
        remove_tree(base)


def test_a_task_that_damages_its_input_and_forges_the_mtime_cannot_pass_it_on(
    node: Node, store: ObjectStore, prefix: S3Url
) -> None:
    data = os.urandom(64 * 1024)
    put(store, prefix.child("in/ref.bin"), data)
    ref = {"source": str(prefix.child("in/ref.bin")), "path": "ref.bin"}
    forge = (
        "chmod u+w ref.bin && printf X | dd of=ref.bin conv=notrunc 2>/dev/null"
        " && chmod 444 ref.bin && touch -d @1 ref.bin"
    )
    wrap_task(spec_for(prefix, forge, id="forger", inputs=[ref]), node)
    spec = spec_for(
        prefix,
        "cat ref.bin > copy.bin",
        id="reader",
        inputs=[ref],
        outputs=[{"path": "copy.bin", "to": str(prefix.child("out/copy.bin"))}],
    )
    result = wrap_task(spec, node)
    assert store.get_bytes(prefix.child("out/copy.bin")) == data
    assert result.manifest.inputs[0].digest == digest_bytes(data)


def test_only_whole_segments_and_manifests_count_when_results_are_read_back(
    store: ObjectStore, raw_client: Any, prefix: S3Url
) -> None:
    results = prefix.child("results/")

    def manifest(n: int) -> ResultManifest:
        return ResultManifest(f"t{n}", f"{n:032x}", ("true",), 0, "h", "now")

    whole = write_segment(store, results, "node 1/ü", [manifest(1), manifest(2)])
    assert whole.key.startswith(results.key + "segments/node_1__/")
    data = store.get_bytes(whole)
    # What a crash mid-write, or another tool, could leave: never counted.
    cut = results.child("segments/dead/cut.jsonl")
    raw_client.put_object(Bucket=cut.bucket, Key=cut.key, Body=data[: len(data) // 2])
    bad = results.child(f"{'9' * 32}/result.json")
    raw_client.put_object(Bucket=bad.bucket, Key=bad.key, Body=b"{ not a result")
    one = results.child(f"{'3' * 32}/result.json")
    store.put_bytes(one, manifest(3).to_bytes())
    found = sorted(r.task_id for r in recorded_results(store, results))
    assert found == ["t1", "t2", "t3"]
