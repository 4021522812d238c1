"""``stager cache ...`` as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from fsd.cache import MARKER_MTIME_NS
from stager.digest import digest_bytes
from stager.locations import S3Url
from stager.s3server import LocalS3Server
from tests.helpers import damage, put_tampered, write_random


def test_fetch_stats_ls_verify_evict(run_cli: Any, tmp_path: Path, prefix: S3Url) -> None:
    data = write_random(tmp_path / "app" / "tool.bin", 300 * 1024)
    write_random(tmp_path / "app" / "lib.so", 1000)
    assert run_cli("push", str(tmp_path / "app"), "--to", str(prefix)).returncode == 0
    cache = ["cache", "--cache-dir", str(tmp_path / "cache")]

    fetched = run_cli(*cache, "fetch", str(prefix))
    assert fetched.returncode == 0, fetched.stderr
    assert str(digest_bytes(data)) in fetched.stdout and "2 entries" in fetched.stdout
    again = run_cli(*cache, "fetch", str(prefix.child("app/tool.bin")))
    assert "local" in again.stdout

    stats = run_cli(*cache, "stats")
    assert "entries    2 (0 pinned)" in stats.stdout and "fetches    2" in stats.stdout
    listing = run_cli(*cache, "ls")
    assert str(digest_bytes(data)) in listing.stdout

    entry = tmp_path / "cache" / "data" / digest_bytes(data).hex[:2] / digest_bytes(data).hex
    os.chmod(entry, 0o644)
    damage(entry)
    os.chmod(entry, 0o444)
    os.utime(entry, ns=(0, MARKER_MTIME_NS))
    verified = run_cli(*cache, "verify")
    assert verified.returncode == 7
    assert f"damaged and dropped: {digest_bytes(data)}" in verified.stdout

    evicted = run_cli(*cache, "evict", "--all")
    assert "evicted 1 entries" in evicted.stdout
    assert "entries    0" in run_cli(*cache, "stats").stdout


def test_cache_errors_are_one_line(run_cli: Any, tmp_path: Path, prefix: S3Url) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("precious")
    foreign = run_cli("cache", "--cache-dir", str(tmp_path / "home"), "stats")
    assert foreign.returncode == 2 and "is not a stager cache" in foreign.stderr
    assert (tmp_path / "home" / "notes.txt").read_text() == "precious"

    write_random(tmp_path / "big.bin", 2000)
    assert run_cli("push", str(tmp_path / "big.bin"), "--to", str(prefix)).returncode == 0
    too_big = run_cli(
        "cache",
        "--cache-dir",
        str(tmp_path / "c"),
        "--cache-quota",
        "1K",
        "fetch",
        str(prefix.child("big.bin")),
    )
    assert too_big.returncode == 9 and "can never fit" in too_big.stderr
    assert len(too_big.stderr.strip().splitlines()) == 1
    missing = run_cli(
        "cache", "--cache-dir", str(tmp_path / "c"), "fetch", str(prefix.child("nope"))
    )
    assert missing.returncode == 3


def test_fetching_a_prefix_checks_each_object_against_its_own_digest(
    run_cli: Any, tmp_path: Path, prefix: S3Url, raw_client: Any
) -> None:
    # Small listed objects come with one GET and no HEAD: the GET's metadata must still win.
    raw_client.put_object(Bucket=prefix.bucket, Key=prefix.child("ok").key, Body=b"fine")
    put_tampered(raw_client, prefix.child("bad"), b"rotten", claimed=b"honest")
    done = run_cli("cache", "--cache-dir", str(tmp_path / "c"), "fetch", str(prefix))
    assert done.returncode == 7, done.stderr
    assert "does not match" in done.stderr and "Traceback" not in done.stderr
    stored = [p.name for p in (tmp_path / "c" / "data").glob("*/*")]
    assert digest_bytes(b"rotten").hex not in stored
    assert digest_bytes(b"fine").hex in stored  # its batch's honest object is kept
    assert [p for p in (tmp_path / "c" / "tmp").iterdir()] == []


def test_verify_reports_damage_that_a_lookup_already_dropped(
    run_cli: Any, tmp_path: Path, prefix: S3Url
) -> None:
    data = write_random(tmp_path / "app" / "tool.bin", 64 * 1024)
    assert run_cli("push", str(tmp_path / "app"), "--to", str(prefix)).returncode == 0
    cache = ["cache", "--cache-dir", str(tmp_path / "cache")]
    assert run_cli(*cache, "fetch", str(prefix.child("app/tool.bin"))).returncode == 0
    entry = tmp_path / "cache" / "data" / digest_bytes(data).hex[:2] / digest_bytes(data).hex
    os.chmod(entry, 0o644)  # written through a link
    damage(entry)
    # The next use finds it damaged, drops it and fetches it again, silently.
    refetched = run_cli(*cache, "fetch", str(prefix.child("app/tool.bin")))
    assert refetched.returncode == 0 and " s3 " in refetched.stdout, refetched.stdout
    verified = run_cli(*cache, "verify")
    assert verified.returncode == 7, verified.stdout
    assert f"damaged and dropped: {digest_bytes(data)}" in verified.stdout
    again = run_cli(*cache, "verify")  # reported once
    assert again.returncode == 0 and "0 damaged" in again.stdout


def _tiers(stdout: str) -> Counter[str]:
    """How many entries each tier gave, from ``stager cache fetch``'s listing."""
    return Counter(line.split()[3] for line in stdout.splitlines() if " s3://" in line)


def test_warming_another_tools_objects_again_moves_nothing(
    run_cli: Any, tmp_path: Path, prefix: S3Url, raw_client: Any
) -> None:
    names = ["a b.txt", "ü/ñ.bin", "empty", *(f"many/{n:03d}" for n in range(150))]
    for name in names:
        body = b"" if name == "empty" else f"bytes of {name}".encode()
        raw_client.put_object(Bucket=prefix.bucket, Key=prefix.child(name).key, Body=body)
    cache = ["cache", "--cache-dir", str(tmp_path / "c")]
    first = run_cli(*cache, "fetch", str(prefix))
    assert first.returncode == 0, first.stderr
    assert _tiers(first.stdout) == {"s3": len(names)}
    again = run_cli(*cache, "fetch", str(prefix))  # found by source: ETag and size match
    assert again.returncode == 0, again.stderr
    assert _tiers(again.stdout) == {"local": len(names)}
    stats = run_cli(*cache, "stats").stdout
    assert f"fetches    {len(names)}" in stats
    assert f"sources    {len(names)} objects without a digest" in stats
    entry = tmp_path / "c" / "data" / digest_bytes(b"bytes of a b.txt").hex[:2]
    assert (entry / digest_bytes(b"bytes of a b.txt").hex).read_bytes() == b"bytes of a b.txt"

    raw_client.put_object(Bucket=prefix.bucket, Key=prefix.child("a b.txt").key, Body=b"new")
    changed = run_cli(*cache, "fetch", str(prefix))  # a changed object is a new source
    assert _tiers(changed.stdout) == {"s3": 1, "local": len(names) - 1}


def test_processes_warming_one_prefix_at_once_fetch_each_object_once(
    s3_server: LocalS3Server, tmp_path: Path, prefix: S3Url, raw_client: Any
) -> None:
    count = 300
    for n in range(count):
        key = prefix.child(f"o{n:03d}").key
        raw_client.put_object(Bucket=prefix.bucket, Key=key, Body=f"object {n}".encode())
    env = {**os.environ, **s3_server.env(), "STAGER_STATE_DIR": str(tmp_path / "state")}
    argv = [sys.executable, "-m", "stager", "cache", "--cache-dir", str(tmp_path / "c")]
    processes = [
        subprocess.Popen([*argv, "fetch", str(prefix)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0]
    tiers = [_tiers(output) for output in outputs]
    assert sum(t["s3"] for t in tiers) == count  # each object came from S3 once
    assert all(sum(t.values()) == count for t in tiers)  # every process has them all
    stats = subprocess.run(
        [*argv, "stats"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert f"entries    {count} (0 pinned)" in stats and f"fetches    {count}" in stats
