"""``stager bench nodes``: the node file service next to S3, in one run.

Three measurements, all against the embedded S3 server on loopback and real
processes:

1. **Fetch**: one object (1 GiB by default) into an empty node cache, from
   S3 (stager's own GET path) and from a peer's file service (``stager fsd
   serve`` in its own process), both hashed and verified into the cache;
   each twice, alternating, after flushing dirty pages; the best of two.
2. **Time to done** of a task writing one 256 MiB output, under ``s3``,
   ``mirror`` (1 peer) and ``local``: two workers with file services (one
   produces, the other takes the mirror), one task per policy in turn,
   timed from submission to the dispatcher's "done", and the wrapper's own
   stage-out time.
3. **Fall-back delay**: staging a small input that a dead peer (a network
   namespace whose packets vanish) is said to hold, minus staging it from
   S3 alone. Skipped where namespaces cannot be made.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.netns import Host, NoNamespaces
from fsd.cache import NodeCache
from fsd.peerclient import PeerClient, PeerLimits
from fsd.stagein import Peers, StageInput, Tier, staged_inputs, warm
from stager.digest import Digest, digest_stream
from stager.errors import UnreachableError
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server, free_ports
from worker_hooks.dispatch.scheduling import Policy
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.protocol import TaskState

BUCKET = "bench-nodes"
MiB = 1024 * 1024


@dataclass(frozen=True)
class FetchFigures:
    bytes: int
    s3_s: float
    peer_s: float
    s3_mib_per_s: float
    peer_mib_per_s: float
    peer_over_s3: float  # how many times faster the peer fetch was


@dataclass(frozen=True)
class PolicyFigures:
    persist: str
    output_bytes: int
    until_done_s: float  # submission to the dispatcher's "done"
    stage_out_s: float  # the wrapper's own stage-out phase


@dataclass(frozen=True)
class FallbackFigures:
    s3_only_s: float  # median of the runs
    dead_peer_s: float
    delay_s: float
    connect_timeout_s: float


@dataclass(frozen=True)
class NodeFigures:
    fetch: FetchFigures
    policies: tuple[PolicyFigures, ...]
    fallback: FallbackFigures | None


def _big_file(path: Path, size: int) -> Digest:
    with path.open("wb") as out:
        for offset in range(0, size, 64 * MiB):
            out.write(os.urandom(min(64 * MiB, size - offset)))
    with path.open("rb") as handle:
        return digest_stream(handle)[0]


def _fresh_cache(root: Path) -> NodeCache:
    root.mkdir(parents=True)
    return NodeCache(root, quota_bytes=64 * 1024**3)


@contextmanager
def _file_service(
    command: list[str], env: dict[str, str], address: str, token: str
) -> Iterator[None]:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                PeerClient(token).status(address)
                break
            except UnreachableError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def fsd_serve_command(listen: str, cache_dir: Path) -> list[str]:
    """``stager fsd serve`` as a process (the token comes from the environment)."""
    serve = ["fsd", "serve", "--listen", listen, "--cache-dir", str(cache_dir)]
    return [sys.executable, "-m", "stager", *serve]


def measure_fetch(work: Path, store: ObjectStore, env: dict[str, str], size: int) -> FetchFigures:
    token = secrets.token_urlsafe(32)
    source = work / "object.bin"
    digest = _big_file(source, size)
    url = S3Url(BUCKET, "fetch/object.bin")
    store.upload_file(source, url, digest=digest, size=size)
    source.unlink()
    item = StageInput(url, "object.bin", digest, size)

    seed = _fresh_cache(work / "seed")  # what the peer serves
    [(_, _, tier)] = warm([item], cache=seed, store=store)
    address = f"127.0.0.1:{free_ports(1)[0]}"
    service_env = {**env, "STAGER_DISPATCHER_TOKEN": token}
    times: dict[Tier, list[float]] = {Tier.S3: [], Tier.PEER: []}
    with _file_service(fsd_serve_command(address, seed.root), service_env, address, token):
        peers = Peers(PeerClient(token), {digest: (address,)})
        # Alternate, and flush dirty pages first: the disk's write-back of one
        # run must not be charged to the next.
        for n, kind in enumerate([Tier.S3, Tier.PEER, Tier.PEER, Tier.S3]):
            os.sync()
            cache = _fresh_cache(work / f"fetch-{n}")
            started = time.perf_counter()
            [(_, _, tier)] = warm(
                [item], cache=cache, store=store, peers=peers if kind is Tier.PEER else None
            )
            times[kind].append(time.perf_counter() - started)
            if tier is not kind:
                raise UnreachableError(f"bench: a {kind.value} fetch came from {tier.value}")
            shutil.rmtree(cache.root)
    s3_s, peer_s = min(times[Tier.S3]), min(times[Tier.PEER])
    return FetchFigures(
        bytes=size,
        s3_s=round(s3_s, 3),
        peer_s=round(peer_s, 3),
        s3_mib_per_s=round(size / MiB / s3_s, 1),
        peer_mib_per_s=round(size / MiB / peer_s, 1),
        peer_over_s3=round(s3_s / peer_s, 2),
    )


def measure_policies(work: Path, env: dict[str, str], output_bytes: int) -> list[PolicyFigures]:
    figures = []
    with LocalCluster(work / "cluster", env, policy=Policy.FIFO) as cluster:
        for name in ("producer", "mirror"):
            cluster.add_worker(name, "--serve", "127.0.0.1:0", "--slots", "1", "--prefetch", "0")
        cluster.wait_for_workers(["producer", "mirror"])
        for persist in ("s3", "mirror", "local"):
            to = f"s3://{BUCKET}/policies/{persist}.bin"
            spec = parse_spec(
                {
                    "id": f"write-{persist}",
                    "command": f"head -c {output_bytes} /dev/urandom > out.bin",
                    "shell": True,
                    "outputs": [{"path": "out.bin", "to": to, "persist": persist}],
                    "results": f"s3://{BUCKET}/results/",
                }
            )
            started = time.perf_counter()
            cluster.client.submit([spec], workflow=persist)
            while (info := cluster.client.task(spec.id)).state is not TaskState.DONE:
                if info.state.final:
                    raise UnreachableError(f"bench: task {spec.id} ended {info.state.value}")
                time.sleep(0.01)
            until_done = time.perf_counter() - started
            stage_out = info.result.timings_s.get("stage_out", 0.0) if info.result else 0.0
            figures.append(PolicyFigures(persist, output_bytes, round(until_done, 3), stage_out))
    return figures


def measure_fallback(work: Path, store: ObjectStore, runs: int = 5) -> FallbackFigures | None:
    try:
        host = Host()
    except NoNamespaces:
        return None
    try:
        host.vanish()
        data = os.urandom(MiB)
        url = S3Url(BUCKET, "fallback/input.bin")
        store.put_bytes(url, data)
        with (work / "input.bin").open("wb") as out:
            out.write(data)
        with (work / "input.bin").open("rb") as handle:
            digest = digest_stream(handle)[0]
        limits = PeerLimits()
        dead = f"{host.address}:8766"

        def stage(n: int, peers: Peers | None) -> float:
            sandbox = work / f"sandbox-{n}-{peers is not None}"
            sandbox.mkdir()
            cache = _fresh_cache(work / f"cache-{n}-{peers is not None}")
            started = time.perf_counter()
            with staged_inputs(
                [StageInput(url, "in.bin", digest, MiB)],
                sandbox,
                cache=cache,
                store=store,
                peers=peers,
            ):
                return time.perf_counter() - started

        plain = [stage(n, None) for n in range(runs)]
        with_dead = [
            stage(n, Peers(PeerClient("t" * 32, limits=limits), {digest: (dead,)}))
            for n in range(runs)
        ]
    finally:
        host.remove()
    s3_only, dead_peer = statistics.median(plain), statistics.median(with_dead)
    return FallbackFigures(
        s3_only_s=round(s3_only, 3),
        dead_peer_s=round(dead_peer, 3),
        delay_s=round(dead_peer - s3_only, 3),
        connect_timeout_s=limits.connect_timeout_s,
    )


def run_nodes_bench(work: Path, *, fetch_bytes: int, output_bytes: int) -> NodeFigures:
    with LocalS3Server(work / "s3") as server:
        server.client().create_bucket(Bucket=BUCKET)
        env = {**os.environ, **server.env(), "STAGER_STATE_DIR": str(work / "state")}
        settings = server.settings(state_dir=work / "state", progress=False)
        with ObjectStore(settings, credentials=server.credentials) as store:
            fetch = measure_fetch(work, store, env, fetch_bytes)
            fallback = measure_fallback(work, store)
        policies = measure_policies(work, env, output_bytes)
    return NodeFigures(fetch, tuple(policies), fallback)


def nodes_markdown(figures: NodeFigures) -> str:
    f = figures.fetch
    lines = [
        "| fetch of one object into an empty cache | seconds | MiB/s |",
        "|---|---|---|",
        f"| from S3 (stager) | {f.s3_s} | {f.s3_mib_per_s} |",
        f"| from a peer's file service | {f.peer_s} | {f.peer_mib_per_s} |",
        "",
        f"Peer fetch / S3 GET speed: **{f.peer_over_s3}x** ({f.bytes / MiB:.0f} MiB object).",
        "",
        "| persist | output | until done (s) | stage-out (s) |",
        "|---|---|---|---|",
        *(
            f"| `{p.persist}` | {p.output_bytes / MiB:.0f} MiB | {p.until_done_s} "
            f"| {p.stage_out_s} |"
            for p in figures.policies
        ),
        "",
    ]
    if figures.fallback is None:
        lines.append("Fall-back delay: not measured (no network namespaces here).")
    else:
        b = figures.fallback
        lines.append(
            f"Fall-back delay for a dead peer (packets vanish): **{b.delay_s} s** "
            f"({b.dead_peer_s} s with the dead peer listed, {b.s3_only_s} s from S3 alone; "
            f"connect timeout {b.connect_timeout_s} s)."
        )
    return "\n".join(lines) + "\n"
