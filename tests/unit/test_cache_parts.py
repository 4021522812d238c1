"""Locks, planners and settings of the node cache."""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath

import pytest

from fsd.eviction import EntryState, plan_eviction
from fsd.locks import LinkLock
from fsd.settings import CacheSettings
from fsd.stagein import ResolvedInput, StageInput, Tier, plan_stage_in, validate_inputs
from stager.digest import Digest, digest_bytes
from stager.errors import ConfigError, LockTimeoutError, UnsafePathError
from stager.locations import S3Url
from stager.owner import Owner
from stager.settings import load_component


def test_a_held_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    first, second = LinkLock(tmp_path / "x.lock"), LinkLock(tmp_path / "x.lock")
    assert first.try_acquire()
    assert not second.try_acquire()
    with pytest.raises(LockTimeoutError):
        second.acquire(timeout_s=0.05)
    first.release()
    assert second.try_acquire()
    assert os.listdir(tmp_path) == ["x.lock"]  # no candidate files left behind


def test_a_lock_of_a_dead_process_is_broken(tmp_path: Path) -> None:
    me = Owner.current()
    (tmp_path / "x.lock").write_text(str(Owner(me.host, me.pid, "not-my-start", "n")))
    assert LinkLock(tmp_path / "x.lock").try_acquire()


def test_a_lock_of_another_host_is_broken_only_when_old(tmp_path: Path) -> None:
    (tmp_path / "x.lock").write_text(str(Owner("other-node", 1, "1", "n")))
    now = [os.stat(tmp_path / "x.lock").st_mtime]
    lock = LinkLock(tmp_path / "x.lock", stale_after_s=600, clock=lambda: now[0])
    assert not lock.try_acquire()
    now[0] += 601
    assert lock.try_acquire()


def test_a_long_hold_keeps_its_lock_fresh(tmp_path: Path) -> None:
    lock = LinkLock(tmp_path / "x.lock", stale_after_s=0.2)
    with lock.holding(keep_fresh=True):
        os.utime(tmp_path / "x.lock", (0, 0))  # as if taken long ago
        deadline = time.monotonic() + 5
        while os.stat(tmp_path / "x.lock").st_mtime == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.stat(tmp_path / "x.lock").st_mtime > 0
    assert not (tmp_path / "x.lock").exists()


def state(name: str, size: int, used: int, pinned: bool = False) -> EntryState:
    return EntryState(name, size, used, pinned)


def test_plan_eviction_takes_lru_unpinned_first() -> None:
    entries = [
        state("new", 10, 3),
        state("old", 10, 1),
        state("pinned", 10, 0, True),
        state("mid", 10, 2),
    ]
    assert [e.hex for e in plan_eviction(entries, 15) or []] == ["old", "mid"]
    assert plan_eviction(entries, 0) == []
    assert plan_eviction(entries, 31) is None


def test_plan_stage_in_prefers_local_then_head_then_s3() -> None:
    d1, d2, d3 = (digest_bytes(text) for text in (b"1", b"2", b"3"))

    def item(name: str, digest: Digest | None) -> ResolvedInput:
        return ResolvedInput(S3Url("bkt", name), PurePosixPath(name), digest, 1)

    planned = plan_stage_in(
        [item("a", d1), item("b", d2), item("c", d3), item("d", None)],
        local={d1},
        nfs_head={d1, d2},
    )
    assert [p.tier for p in planned] == [Tier.LOCAL, Tier.NFS_HEAD, Tier.S3, Tier.S3]


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (StageInput(S3Url("bkt", "k"), "../x"), UnsafePathError),
        (StageInput(S3Url("bkt", "k"), "/etc/x"), UnsafePathError),
        (StageInput(S3Url("bkt", "dir/"), "x"), ConfigError),
        (StageInput(S3Url("bkt", "k"), "x", size=-1), ConfigError),
    ],
)
def test_validate_inputs_refuses_bad_specs(spec: StageInput, error: type[Exception]) -> None:
    with pytest.raises(error):
        validate_inputs([spec])


def test_two_inputs_on_one_sandbox_path_are_refused() -> None:
    with pytest.raises(ConfigError, match="two inputs"):
        validate_inputs([StageInput(S3Url("bkt", "a"), "x"), StageInput(S3Url("bkt", "b"), "./x")])


def test_cache_settings_come_from_their_own_table_and_environment(tmp_path: Path) -> None:
    (tmp_path / "stager.toml").write_text(
        'max_concurrency = 4\n[cache]\ncache_quota = "2G"\ncache_reserve_wait_s = 5\n'
    )
    settings = load_component(
        CacheSettings, environ={"STAGER_CACHE_DIR": "/scratch/c"}, cwd=tmp_path, section="cache"
    )
    assert settings.cache_quota == 2 * 1024**3
    assert settings.cache_reserve_wait_s == 5.0
    assert settings.cache_dir == Path("/scratch/c")
    with pytest.raises(ConfigError, match="cache_reserve_wait_s"):
        load_component(
            CacheSettings,
            {"cache_reserve_wait_s": "soon"},
            environ={},
            cwd=tmp_path,
            section="cache",
        )
