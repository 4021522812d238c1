"""``stager cache ...`` as a user runs it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fsd.cache import MARKER_MTIME_NS
from stager.digest import digest_bytes
from stager.locations import S3Url
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
