"""``stager bench transfer``: upload and cold download, stager next to its peers.

For each workload (shaped like the S3 clients' own benchmark suites) every
tool uploads the same generated files, then downloads the same objects
into an empty directory (stager: into an empty node cache, which is what
its stage-in does). Each run is a separate process: wall time and peak
memory (``wait4``'s maximum RSS) are the tool's own. Every run is checked:
uploads by listing the keys and sizes, downloads by hashing every file
received against the source. In the same run: warm stage-in (a cache hit
linked into a sandbox) per file, and what hashing the bytes costs as a
share of stager's cold download.

Absolute times are noisy on shared machines; the report's point is the
ratio to the other tools measured minutes apart on the same server.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.peers import TOOLS, Endpoint, Tool
from fsd.cache import NodeCache
from fsd.stagein import StageInput, resolve_inputs, staged_resolved
from stager.digest import Digest, Hasher, HashingWriter, digest_bytes, digest_stream
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.parallel import run_all

KiB, MiB, GiB = 1024, 1024**2, 1024**3
BUCKET = "stager-bench"


@dataclass(frozen=True)
class Workload:
    name: str
    files: int
    file_bytes: int

    def scaled(self, scale: float) -> Workload:
        """Large files shrink in size, small ones in count (the shape is kept)."""
        if self.file_bytes >= MiB:
            return Workload(self.name, self.files, max(MiB, int(self.file_bytes * scale)))
        return Workload(self.name, max(10, int(self.files * scale)), self.file_bytes)

    @property
    def label(self) -> str:
        size = (
            f"{self.file_bytes // MiB} MiB"
            if self.file_bytes >= MiB
            else f"{self.file_bytes // KiB} KiB"
        )
        return f"{self.files} x {size}"


WORKLOADS = (
    Workload("one-large", 1, GiB),
    Workload("ten-medium", 10, 100 * MiB),
    Workload("many-small", 1000, 64 * KiB),
    Workload("very-many-tiny", 10000, 4 * KiB),
)


@dataclass(frozen=True)
class Run:
    tool: str
    workload: str
    direction: str
    seconds: float
    peak_rss_bytes: int
    ok: bool
    note: str = ""
    cpu_s: float = 0.0  # user + system, of the tool's process (the server's not included)
    moved_bytes: int = 0


@dataclass
class TransferReport:
    conditions: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    warm_stage_in_ms_per_file: dict[str, float] = field(default_factory=dict)
    digest_share_of_cold: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "ratios": self.ratios(),
            "of_ceiling": self.of_ceiling(),
            "cpu_s_per_gib": self.cpu_per_gib(),
        }

    def of_ceiling(self) -> dict[str, dict[str, float]]:
        """Per download workload: the ceiling's time / each tool's (1: as fast as any client)."""
        ceilings = {r.workload: r for r in self.runs if r.tool == CEILING and r.ok}
        return {
            workload: {
                r.tool: round(ceiling.seconds / r.seconds, 3)
                for r in self.runs
                if r.workload == workload and r.direction == "download" and r.ok
                if r.tool != CEILING
            }
            for workload, ceiling in ceilings.items()
        }

    def cpu_per_gib(self) -> dict[str, dict[str, float]]:
        """Per "workload/direction": each tool's CPU seconds per GiB moved."""
        found: dict[str, dict[str, float]] = {}
        for r in self.runs:
            if r.ok and r.moved_bytes:
                key = f"{r.workload}/{r.direction}"
                found.setdefault(key, {})[r.tool] = round(r.cpu_s / (r.moved_bytes / GiB), 2)
        return found

    def ratios(self) -> dict[str, dict[str, float]]:
        """Per "workload/direction": peer time / stager time (above 1: stager is faster)."""
        ratios: dict[str, dict[str, float]] = {}
        by_key = {(r.workload, r.direction, r.tool): r for r in self.runs if r.ok}
        for (workload, direction, tool), run in by_key.items():
            mine = by_key.get((workload, direction, "stager"))
            if tool not in ("stager", CEILING) and mine is not None:
                key = f"{workload}/{direction}"
                ratios.setdefault(key, {})[tool] = round(run.seconds / mine.seconds, 3)
        return ratios


TIME_BINARY = "/usr/bin/time"
CEILING = "ceiling"  # the native client reading every object into a null sink, in-process


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_bytes: int
    cpu_s: float
    exit_code: int
    stderr_tail: str


def measure(argv: Sequence[str], env: Mapping[str, str]) -> Measured:
    """Run one command; its time, peak RSS, CPU (user + system), exit code, stderr tail.

    The command runs under GNU time, a small process that forks it: a child
    forked from this (large) process would count our memory as its own. The
    disk is synced first, so no run pays for the writeback of the one before.
    """
    os.sync()
    with tempfile.NamedTemporaryFile(suffix=".rss") as rss, tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        code = subprocess.run(
            [TIME_BINARY, "-f", "%M %U %S", "-o", rss.name, *argv],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            check=False,
        ).returncode
        seconds = time.perf_counter() - started
        errors.seek(0)
        tail = errors.read()[-300:].decode(errors="replace").strip()
        figures = Path(rss.name).read_text().split()[-3:]
    try:
        peak_kib, cpu_s = int(figures[0]), float(figures[1]) + float(figures[2])
    except (IndexError, ValueError):  # killed by a signal: GNU time says so instead
        peak_kib, cpu_s = 0, 0.0
    return Measured(seconds, peak_kib * 1024, cpu_s, code, tail)


def make_files(root: Path, workload: Workload) -> Counter[Digest]:
    """Write the workload's files; return the multiset of their digests."""
    root.mkdir(parents=True)
    digests: Counter[Digest] = Counter()
    for n in range(workload.files):
        hasher = Hasher()
        with (root / f"f{n:05d}.bin").open("wb") as out:
            for offset in range(0, workload.file_bytes, 4 * MiB):
                chunk = os.urandom(min(4 * MiB, workload.file_bytes - offset))
                hasher.update(chunk)
                out.write(chunk)
        digests[hasher.digest] += 1
    return digests


def digests_under(root: Path) -> Counter[Digest]:
    found: Counter[Digest] = Counter()
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and "stager-tmp" not in path.name:
            bookkeeping = ("/locks/", "/seals/", "/sources/")  # a cache's, not its entries
            if any(part in str(path) for part in bookkeeping):
                continue
            if path.name in ("VERSION", "TIER", "ledger.json", "damaged.log"):
                continue
            with path.open("rb") as handle:
                found[digest_stream(handle)[0]] += 1
    return found


class TransferBench:
    def __init__(
        self,
        store: ObjectStore,
        endpoint: Endpoint,
        work: Path,
        *,
        tools: Sequence[Tool],
        log: Callable[[str], None],
    ) -> None:
        self.store = store
        self.endpoint = endpoint
        self.work = work
        self.tools = tools
        self.log = log

    def run(self, workloads: Sequence[Workload], conditions: dict[str, Any]) -> TransferReport:
        report = TransferReport(conditions)
        self.store.ensure_bucket(BUCKET)
        self._warm_up_server()
        for workload in workloads:
            source = self.work / "source" / workload.name
            expected = make_files(source, workload)
            for tool in self.tools:
                report.runs.append(self._upload(tool, workload, source))
            canonical = S3Url(BUCKET, f"stager/{workload.name}/")
            self._read_once(canonical)
            for tool in self.tools:
                report.runs.append(self._download(tool, workload, canonical, expected))
            report.runs.append(self._ceiling(workload, canonical))
            self._stager_extras(report, workload, canonical, source)
            shutil.rmtree(source)
        return report

    def _warm_up_server(self) -> None:
        """Write (and delete) a multipart object before any timed run: the server
        allocates its volumes on the first writes, seconds that would otherwise
        fall on whichever tool happens to go first."""
        self.work.mkdir(parents=True, exist_ok=True)
        warm = self.work / "warm-up.bin"
        data = os.urandom(3 * self.store.settings.part_size_bytes)
        warm.write_bytes(data)
        url = S3Url(BUCKET, "warm-up/warm-up.bin")
        self.store.upload_file(warm, url, digest=digest_bytes(data), size=len(data))
        self.store.delete(url)
        warm.unlink()

    def _read_once(self, prefix: S3Url) -> None:
        """Read every object below ``prefix`` once, untimed: the server's first read of
        an object it just stored is slower (seen: 1.2-1.8 s against 0.7-0.9 s for 100 MiB),
        which would fall on whichever tool downloads first."""
        for url, *_ in self.store.list(prefix):
            self.store.read_into(url, HashingWriter(None))

    def _record(
        self,
        tool: Tool,
        workload: Workload,
        direction: str,
        argv: list[str],
        check: Callable[[], str],
    ) -> Run:
        got = measure(argv, tool.env(self.endpoint, self.work))
        problem = f"exit {got.exit_code}: {got.stderr_tail}" if got.exit_code else check()
        run = Run(
            tool.name,
            workload.name,
            direction,
            round(got.seconds, 3),
            got.peak_rss_bytes,
            not problem,
            problem,
            round(got.cpu_s, 3),
            workload.files * workload.file_bytes,
        )
        self._log(run)
        return run

    def _log(self, run: Run) -> None:
        status = "ok" if run.ok else f"FAILED ({run.note})"
        self.log(
            f"{run.workload:>16} {run.direction:<9} {run.tool:<8} {run.seconds:8.2f} s "
            f"{run.peak_rss_bytes / MiB:7.0f} MiB {run.cpu_s:6.2f} s CPU  {status}"
        )

    def _ceiling(self, workload: Workload, prefix: S3Url) -> Run:
        """The fastest any client gets from this server here: the native client reading
        every object into a null sink, files in flight as stager's, in this process."""
        urls = [item.url for item in self.store.list(prefix)]
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        run_all(
            lambda url: self.store.read_into(url, HashingWriter(None)),
            urls,
            workers=self.store.settings.files_in_flight,
        )
        seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        run = Run(
            CEILING,
            workload.name,
            "download",
            round(seconds, 3),
            0,
            True,
            "",
            round(cpu, 3),
            workload.files * workload.file_bytes,
        )
        self._log(run)
        return run

    def _upload(self, tool: Tool, workload: Workload, source: Path) -> Run:
        dest = S3Url(BUCKET, f"{tool.name}/{workload.name}/")

        def check() -> str:
            sizes = Counter(item.size for item in self.store.list(dest))
            wanted = Counter({workload.file_bytes: workload.files})
            return "" if sizes == wanted else f"uploaded {sum(sizes.values())} objects, sizes off"

        return self._record(
            tool, workload, "upload", tool.upload(source, dest, self.endpoint), check
        )

    def _download(
        self, tool: Tool, workload: Workload, source: S3Url, expected: Counter[Digest]
    ) -> Run:
        dest = self.work / "download" / tool.name
        dest.mkdir(parents=True)

        def check() -> str:
            got = digests_under(dest)
            return "" if got == expected else f"{sum(got.values())} files, digests differ"

        try:
            return self._record(
                tool, workload, "download", tool.download(source, dest, self.endpoint), check
            )
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    def _stager_extras(
        self, report: TransferReport, workload: Workload, canonical: S3Url, source: Path
    ) -> None:
        """Warm stage-in per file, and the digest's share of a cold stage-in."""
        cache_root = self.work / "warm-cache"
        cache = NodeCache(cache_root, quota_bytes=64 * GiB)
        listed = [
            StageInput(u, f"in/{u.key.rsplit('/', 1)[1]}") for u, *_ in self.store.list(canonical)
        ]
        inputs = resolve_inputs(listed, store=self.store)  # the digests, as a spec gives them
        started = time.perf_counter()
        with staged_resolved(inputs, self.work / "sandbox-cold", cache=cache, store=self.store):
            pass
        cold_s = time.perf_counter() - started
        started = time.perf_counter()
        with staged_resolved(inputs, self.work / "sandbox-warm", cache=cache, store=self.store):
            pass
        warm_s = time.perf_counter() - started
        report.warm_stage_in_ms_per_file[workload.name] = round(warm_s / len(inputs) * 1000, 3)
        started = time.perf_counter()
        for path in source.iterdir():
            with path.open("rb") as handle:
                hasher = Hasher()
                while chunk := handle.read(256 * KiB):  # as the stream delivers it
                    hasher.update(chunk)
        hash_s = time.perf_counter() - started
        report.digest_share_of_cold[workload.name] = round(hash_s / cold_s, 4)
        for directory in (cache_root, self.work / "sandbox-cold", self.work / "sandbox-warm"):
            shutil.rmtree(directory, ignore_errors=True)


def available_tools(names: Sequence[str]) -> tuple[list[Tool], list[str]]:
    """The named tools that are installed, and the names of those that are not."""
    chosen = [TOOLS[name] for name in names]
    return [t for t in chosen if t.available()], [t.name for t in chosen if not t.available()]
