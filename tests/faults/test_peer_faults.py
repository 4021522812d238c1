"""Peer fetch when the peer fails: refused, dead (packets vanish), slow, lying.

Each case stages one input that a peer is said to hold; the peer misbehaves,
and the stage-in must fall back to S3 with the right bytes, within a bound
set by the peer limits (not one long read timeout), and report the peer.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.netns import Host, NoNamespaces
from bench.nodes import fsd_serve_command
from fsd.cache import NodeCache
from fsd.peerclient import PeerClient, PeerLimits
from fsd.stagein import Peers, StageInput, Tier, staged_inputs
from stager.digest import Digest, digest_bytes
from stager.errors import UnreachableError
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server, free_ports
from tests.helpers import count_requests

TOKEN = "peer-fault-test-token-0123456789"
SIZE = 3 * 1024 * 1024
LIMITS = PeerLimits(connect_timeout_s=1.0, stall_s=1.0, grace_s=1.0, min_bytes_per_s=1e6)
# Every fall-back must end well inside this (the limits above make it ~1-2 s); a hang
# on a peer would blow it by minutes, so a slow machine does not fail it.
BOUND_S = 20.0


class LyingPeer:
    """An HTTP peer on loopback that answers every request with ``reply(size)``."""

    def __init__(self, reply: Callable[[socket.socket, int], None]) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.reply = reply
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.server.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            with connection, contextlib.suppress(OSError):
                connection.recv(65536)
                self.reply(connection, SIZE)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.server.close()


def header(size: int) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode()


def trickle(connection: socket.socket, size: int) -> None:
    connection.sendall(header(size))
    for _ in range(200):  # 4 KiB a quarter second: alive, never silent, far too slow
        connection.sendall(b"x" * 4096)
        time.sleep(0.25)


def wrong_bytes(connection: socket.socket, size: int) -> None:
    connection.sendall(header(size) + b"\x00" * size)


@pytest.fixture
def uploaded(store: ObjectStore, prefix: S3Url) -> tuple[S3Url, bytes, Digest]:
    data = os.urandom(SIZE)
    url = prefix.child("input.bin")
    store.put_bytes(url, data)
    return url, data, digest_bytes(data)


def stage_with_peer(
    tmp_path: Path, store: ObjectStore, uploaded: tuple[S3Url, bytes, Digest], address: str
) -> tuple[Tier, float, list[str], int]:
    """Stage the input with ``address`` said to hold it: (tier, seconds, peers reported, GETs)."""
    url, data, digest = uploaded
    cache_root = tmp_path / f"cache-{time.monotonic_ns()}"
    cache_root.mkdir()
    cache = NodeCache(cache_root, quota_bytes=1 << 30)
    client = PeerClient(TOKEN, limits=LIMITS)
    sandbox = tmp_path / f"sandbox-{time.monotonic_ns()}"
    sandbox.mkdir()
    requests = count_requests(store)
    started = time.monotonic()
    with staged_inputs(
        [StageInput(url, "in.bin", digest, SIZE)],
        sandbox,
        cache=cache,
        store=store,
        peers=Peers(client, {digest: (address,)}),
    ) as staged:
        seconds = time.monotonic() - started
        assert (sandbox / "in.bin").read_bytes() == data
        return staged[0].tier, seconds, client.take_bad(), requests["GetObject"]


def test_a_refusing_peer_falls_back_to_s3(
    tmp_path: Path, store: ObjectStore, uploaded: tuple[S3Url, bytes, Digest]
) -> None:
    closed = f"127.0.0.1:{free_ports(1)[0]}"
    tier, seconds, bad, _ = stage_with_peer(tmp_path, store, uploaded, closed)
    assert tier is Tier.S3 and bad == [closed] and seconds < BOUND_S


@pytest.mark.parametrize("reply", [trickle, wrong_bytes], ids=["slow", "corrupting"])
def test_a_slow_or_lying_peer_falls_back_to_s3(
    tmp_path: Path,
    store: ObjectStore,
    uploaded: tuple[S3Url, bytes, Digest],
    reply: Callable[[socket.socket, int], None],
) -> None:
    peer = LyingPeer(reply)
    try:
        tier, seconds, bad, gets = stage_with_peer(tmp_path, store, uploaded, peer.address)
    finally:
        peer.stop()
    assert tier is Tier.S3 and bad == [peer.address] and gets >= 1
    assert seconds < BOUND_S


@pytest.fixture
def other_host() -> Iterator[Host]:
    try:
        host = Host()
    except NoNamespaces as exc:
        pytest.skip(str(exc))
    try:
        yield host
    finally:
        host.remove()


def test_a_peer_on_another_host_serves_then_vanishes(
    tmp_path: Path,
    store: ObjectStore,
    uploaded: tuple[S3Url, bytes, Digest],
    other_host: Host,
    s3_server: LocalS3Server,
) -> None:
    _, data, digest = uploaded
    peer_cache = tmp_path / "peer-cache"
    peer_cache.mkdir()
    NodeCache(peer_cache, quota_bytes=1 << 30).ensure(digest, SIZE, lambda w: w.write(data))
    port = 8766
    service = subprocess.Popen(
        other_host.command(fsd_serve_command(f"{other_host.address}:{port}", peer_cache)),
        env={**os.environ, **s3_server.env(), "STAGER_DISPATCHER_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    address = f"{other_host.address}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(UnreachableError):
                PeerClient(TOKEN).status(address)
                break
            assert service.poll() is None, service.stderr.read() if service.stderr else ""
            assert time.monotonic() < deadline, "the peer's file service did not start"
            time.sleep(0.2)
        tier, _, bad, gets = stage_with_peer(tmp_path, store, uploaded, address)
        assert tier is Tier.PEER and bad == [] and gets == 0  # from the peer, not S3

        other_host.vanish()
        tier, seconds, bad, _ = stage_with_peer(tmp_path, store, uploaded, address)
        assert tier is Tier.S3 and bad == [address]
        assert seconds < BOUND_S
    finally:
        service.kill()
        service.wait()
