"""Batches of small entries (fsd.batchinsert): claims, publication, and how they meet
single fetches (NodeCache.ensure) on the same flights."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from fsd.batchinsert import ensure_many
from fsd.cache import NodeCache, Staged, Wanted
from fsd.ledger import Ledger, Reservation, read_ledger, write_ledger
from stager.digest import HashingWriter, digest_bytes
from stager.errors import IntegrityError, NotFoundError, StagerError
from stager.owner import Owner
from tests.helpers import files_under

PAYLOADS = [f"object {n}".encode() for n in range(5)]


class Served:
    """A batch fill over fixed payloads (None: that object is missing); counts the fills."""

    def __init__(self, payloads: Sequence[bytes | None]) -> None:
        self.payloads = payloads
        self.asked: list[int] = []

    def __call__(self, writers: Sequence[tuple[int, HashingWriter]]) -> list[StagerError | None]:
        outcomes: list[StagerError | None] = []
        for n, writer in writers:
            self.asked.append(n)
            payload = self.payloads[n]
            if payload is None:
                outcomes.append(NotFoundError(f"object {n} is gone"))
            else:
                writer.write(payload)
                outcomes.append(None)
        return outcomes


def wanted_for(payloads: Sequence[bytes]) -> list[Wanted]:
    return [Wanted(digest_bytes(p), len(p)) for p in payloads]


def test_a_batch_publishes_every_entry_with_one_claim_and_fetches_nothing_twice(
    tmp_path: Path,
) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    fill = Served(PAYLOADS)
    wanted = wanted_for(PAYLOADS)
    entries = ensure_many(cache, [*wanted, wanted[0]], fill)  # one asked for twice
    assert [e.read_bytes() for e in entries] == [*PAYLOADS, PAYLOADS[0]]
    assert sorted(fill.asked) == [0, 1, 2, 3, 4]
    assert cache.stats().fetches == 5 and cache.stats().used_bytes == sum(map(len, PAYLOADS))
    assert read_ledger(tmp_path / "c" / "ledger.json").reservations == {}  # the claim ended
    assert files_under(tmp_path / "c" / "tmp") == []
    assert all(e.stat().st_mode & 0o777 == 0o444 for e in entries)

    again = Served(PAYLOADS)
    assert ensure_many(cache, wanted, again) == entries[:5] and again.asked == []


def test_a_failed_or_damaged_object_fails_alone_and_the_rest_is_published(
    tmp_path: Path,
) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    wanted = wanted_for(PAYLOADS)
    fill = Served([PAYLOADS[0], None, b"not object 2", PAYLOADS[3], PAYLOADS[4]])
    with pytest.raises(NotFoundError, match="object 1 is gone"):
        ensure_many(cache, wanted, fill)
    for n in (0, 3, 4):
        assert cache.lookup(wanted[n].digest) is not None  # type: ignore[arg-type]
    for n in (1, 2):
        assert cache.lookup(wanted[n].digest) is None  # type: ignore[arg-type]
    # The missing object is asked once; the damaged one once in the batch, then twice
    # alone (fetched once more after a mismatch), and refused.
    assert fill.asked.count(1) == 1 and fill.asked.count(2) == 3
    assert files_under(tmp_path / "c" / "tmp") == []
    with pytest.raises(IntegrityError):
        ensure_many(cache, [wanted[2]], Served([b"not object 2"]))


def test_a_flight_another_batch_claimed_is_waited_for_not_fetched(tmp_path: Path) -> None:
    batch = NodeCache(tmp_path / "c", quota_bytes=10_000)
    wanted = wanted_for(PAYLOADS[:2])
    key, claimed = batch.claim(wanted)  # a batch of a live process (this one) under way
    assert key is not None and claimed == wanted
    assert batch.claim(wanted) == (None, [])  # a second batch claims none of them

    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    single = NodeCache(tmp_path / "c", quota_bytes=10_000, recover=False, sleep=sleep)
    fill = Served(PAYLOADS)
    found: list[Path] = []
    waiting = threading.Thread(
        target=lambda: found.append(single.ensure(wanted[0].digest, wanted[0].size, _one(fill)))
    )
    waiting.start()
    deadline = time.monotonic() + 10
    while not waits and time.monotonic() < deadline:
        time.sleep(0.01)
    assert waits and not found  # it waits for the claim...

    staged = []
    for w, payload in zip(wanted, PAYLOADS, strict=False):
        temp = tmp_path / "c" / "tmp" / f"{w.name}.staged"
        with temp.open("xb") as handle:
            handle.write(payload)
            batch.ready_staged(temp, handle.fileno())
        staged.append(Staged(temp, digest_bytes(payload), len(payload)))
    published = batch.publish_claimed(key, staged)
    waiting.join(timeout=10)
    assert found == published[:1] and fill.asked == []  # ...and finds it, fetching nothing
    assert batch.stats().fetches == 2


def _one(fill: Served) -> Callable[[HashingWriter], None]:
    def one(writer: HashingWriter) -> None:
        fill([(0, writer)])

    return one


def test_the_claim_of_a_batch_whose_process_died_holds_no_one_up(tmp_path: Path) -> None:
    waits: list[float] = []
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000, sleep=waits.append)
    wanted = wanted_for(PAYLOADS[:2])
    me = Owner.current()
    dead = Owner(me.host, me.pid, "not-my-start-time", "x")  # killed mid-batch
    ledger = tmp_path / "c" / "ledger.json"
    write_ledger(
        ledger, Ledger(reservations={str(dead): Reservation(20, time.time(), (wanted[0].name,))})
    )
    fill = Served(PAYLOADS)
    assert cache.ensure(wanted[0].digest, wanted[0].size, _one(fill)).read_bytes() == PAYLOADS[0]
    assert waits == [] and fill.asked == [0]  # not waited for: its owner is gone
    key, claimed = cache.claim(wanted[1:])
    assert key is not None and claimed == wanted[1:]
    assert list(read_ledger(ledger).reservations) == [key]  # the dead claim was dropped
