"""``stager bench workflow``: the data-diffusion experiment.

N tasks each read one shared reference plus a small input of their own, on
K worker processes (separate caches, as separate nodes):

- ``stager``: inputs declared in the spec, staged through each node's cache
  and placed by the data-aware policy (one reference download per node);
- ``shared``: the NFS-head mode, every worker's cache in one shared
  directory (one reference download in all); by default a directory on this
  machine's disk, or any mount given (``--shared-dir``), such as a real NFS
  export;
- ``naive``: the same commands in a job script that downloads every input
  for every task with ``aws s3 cp`` (or s5cmd / ``stager pull``, whichever
  is installed), as batch jobs commonly do;
- ``ideal``: the compute time spread over K workers plus one reference
  download, the floor any staging layer can reach on K real nodes. The K
  workers here share one machine's cores, so K downloads at once take
  longer than one: ``ideal_here`` counts that time instead.

Reported: makespan (submission to the last completion), bytes read from S3,
and the ratios naive/stager and stager/ideal. Every run goes through the
same dispatcher and workers; only the data path differs.
"""

from __future__ import annotations

import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.peers import TOOLS, Endpoint
from fsd.cache import NodeCache
from fsd.stagein import warm
from stager.digestcache import DigestCache
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.parallel import run_all
from stager.push import push
from stager.s3server import LocalS3Server
from worker_hooks.dispatch.follow import wait_for_workflow
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.local.demo import BUCKET, DemoShape, build_workflow, generate_dataset
from worker_hooks.task.parse import parse_spec

COMPUTE = "{ cksum < reference.bin; cksum < input.dat; } > result.txt"


@dataclass(frozen=True)
class RunFigures:
    mode: str  # "stager", "shared" or "naive"
    makespan_s: float
    bytes_from_s3: int


@dataclass(frozen=True)
class WorkflowFigures:
    tasks: int
    workers: int
    reference_bytes: int
    downloader: str
    shared_dir: str
    runs: tuple[RunFigures, ...]
    ideal_makespan_s: float  # compute over K workers, plus one reference download
    # The same with K downloads at once: what K nodes sharing this machine's cores can reach.
    ideal_here_s: float
    compute_s_per_task: float
    reference_fetch_s: float
    reference_fetch_all_nodes_s: float

    def run(self, mode: str) -> RunFigures:
        return next(r for r in self.runs if r.mode == mode)

    def to_json(self) -> dict[str, Any]:
        stager = self.run("stager").makespan_s
        return {
            **asdict(self),
            "naive_over_stager": round(self.run("naive").makespan_s / stager, 3),
            "stager_over_ideal": round(stager / self.ideal_makespan_s, 3),
            "stager_over_ideal_here": round(stager / self.ideal_here_s, 3),
            "shared_over_ideal": round(self.run("shared").makespan_s / self.ideal_makespan_s, 3),
            "foreign_over_stager": round(self.run("foreign").makespan_s / stager, 3),
        }


def _download_command(endpoint: Endpoint, url: str, path: str) -> tuple[str, str]:
    """(tool name, shell command) that fetches ``url`` to ``path`` the naive way."""
    for name in ("aws-cli", "s5cmd"):
        tool = TOOLS[name]
        if tool.available():
            binary = shlex.quote(tool.path)  # type: ignore[attr-defined]
            verb = "s3 cp --only-show-errors" if name == "aws-cli" else "cp"
            return name, f"{binary} --endpoint-url {endpoint.url} {verb} {url} {path}"
    stager = f"{shlex.quote(sys.executable)} -m stager --no-progress"
    return "stager-pull", f"{stager} --endpoint-url {endpoint.url} pull {url} {path}"


def naive_tasks(
    tasks: list[dict[str, Any]], endpoint: Endpoint
) -> tuple[str, list[dict[str, Any]]]:
    """The same tasks with no declared inputs: the script downloads each one itself."""
    converted = []
    tool = "none"
    for task in tasks:
        fetches = []
        for item in task["inputs"]:
            tool, command = _download_command(endpoint, item["source"], item["path"])
            fetches.append(command)
        converted.append(
            {
                **task,
                "id": "naive-" + task["id"],
                "inputs": [],
                "command": " && ".join([*fetches, task["command"]]),
                # The script reaches S3 itself, so it asks for the worker's keys.
                "pass_env": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"],
            }
        )
    return tool, converted


def foreign_reference_tasks(
    tasks: list[dict[str, Any]], server: LocalS3Server, reference: Path
) -> list[dict[str, Any]]:
    """The same tasks, reading a copy of the reference that plain boto3 uploaded.

    Such an object carries no digest, and the tasks give none: stager learns
    it on the first fetch (the node cache's source index) and from the first
    completion (the dispatcher's scheduling).
    """
    server.client().upload_file(str(reference), BUCKET, "bench/foreign/reference.bin")
    source = {"source": f"s3://{BUCKET}/bench/foreign/reference.bin", "path": "reference.bin"}
    return [
        {
            **task,
            "id": "foreign-" + task["id"],
            "inputs": [source, *(i for i in task["inputs"] if i["path"] != "reference.bin")],
        }
        for task in tasks
    ]


def _compute_seconds(sample: Path, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["sh", "-c", COMPUTE], cwd=sample, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _fetch_seconds(work: Path, url: S3Url, store: ObjectStore, *, nodes: int) -> float:
    """Seconds for ``nodes`` caches to fetch ``url`` at once (threads of this process)."""
    caches = [NodeCache(work / f"cache-{n}", quota_bytes=1 << 40) for n in range(nodes)]
    started = time.perf_counter()
    run_all(lambda cache: warm([url], cache=cache, store=store), caches, workers=nodes)
    seconds = time.perf_counter() - started
    shutil.rmtree(work)
    return seconds


def run_workflow_bench(
    work: Path,
    *,
    tasks: int,
    workers: int,
    reference_bytes: int,
    log: Any,
    shared_dir: Path | None = None,
) -> WorkflowFigures:
    shape = DemoShape(map_tasks=tasks, workers=workers, reference_bytes=reference_bytes)
    with LocalS3Server(work / "s3") as server:
        settings = server.settings(state_dir=work / "state", progress=False)
        endpoint = Endpoint.of(server)
        with (
            ObjectStore(settings, credentials=server.credentials) as store,
            DigestCache(settings.state_dir / "digests.sqlite") as digests,
        ):
            store.ensure_bucket(BUCKET)
            dataset = generate_dataset(work / "frontend", shape)
            pushed = push(
                [str(dataset)], S3Url(BUCKET, "bench/data/"), store=store, digests=digests
            )
            maps = [t for t in build_workflow(pushed, shape)["tasks"] if t["id"] != "reduce"]
            stager_tasks = [{"shell": True, "timeout_s": 3600, **t} for t in maps]
            tool, naive = naive_tasks(stager_tasks, endpoint)
            foreign = foreign_reference_tasks(stager_tasks, server, dataset / "reference.bin")
            sample = work / "sample"
            sample.mkdir()
            (sample / "reference.bin").symlink_to(dataset / "reference.bin")
            (sample / "input.dat").symlink_to(dataset / "inputs" / "task-0000.dat")
            compute_s = _compute_seconds(sample)
            reference = S3Url.parse(stager_tasks[0]["inputs"][0]["source"])
            fetch_s = _fetch_seconds(work / "probe-alone", reference, store, nodes=1)
            fetch_all_s = _fetch_seconds(work / "probe-all", reference, store, nodes=workers)
            env = {**server.env(), "STAGER_STATE_DIR": str(work / "state")}
            # The job script's downloads bypass stager: their bytes are counted, not reported.
            input_bytes = sum(e.size for e in pushed.manifest.entries) - reference_bytes
            naive_bytes = tasks * reference_bytes + input_bytes
            head = shared_dir or work / "nfs-head"
            runs = []
            for mode, batch, cache_dir in (
                ("stager", stager_tasks, None),
                ("foreign", foreign, None),
                ("shared", stager_tasks, head / f"cache-{secrets.token_hex(4)}"),
                ("naive", naive, None),
            ):
                with LocalCluster(work / f"cluster-{mode}", env) as cluster:
                    names = [f"{mode}-node-{n}" for n in range(workers)]
                    # On a shared mount, tasks read inputs where they lie, not copied
                    # into each sandbox (a hard link cannot cross file systems).
                    shared = ("--materialize", "symlink") if cache_dir else ()
                    for name in names:
                        cluster.add_worker(name, *shared, cache_dir=cache_dir)
                    cluster.wait_for_workers(names)
                    # Results of its own, so no run finds another's (memoized) results.
                    results = f"s3://{BUCKET}/results/{mode}/"
                    started = time.perf_counter()
                    specs = [parse_spec({**t, "results": results}) for t in batch]
                    cluster.client.submit(specs, workflow=mode)
                    status = wait_for_workflow(
                        cluster.client, mode, poll_s=0.2, echo=lambda _: None
                    )
                    makespan = round(time.perf_counter() - started, 2)
                    read = naive_bytes if mode == "naive" else status.bytes_from_s3
                    runs.append(RunFigures(mode, makespan, read))
                if cache_dir is not None:
                    shutil.rmtree(cache_dir, ignore_errors=True)
                log(f"{mode}: {makespan:.1f} s")
    return WorkflowFigures(
        tasks=tasks,
        workers=workers,
        reference_bytes=reference_bytes,
        downloader=tool,
        shared_dir=str(head),
        runs=tuple(runs),
        ideal_makespan_s=round(compute_s * tasks / workers + fetch_s, 2),
        ideal_here_s=round(compute_s * tasks / workers + fetch_all_s, 2),
        compute_s_per_task=round(compute_s, 3),
        reference_fetch_s=round(fetch_s, 3),
        reference_fetch_all_nodes_s=round(fetch_all_s, 3),
    )
