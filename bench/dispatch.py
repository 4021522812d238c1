"""``stager bench dispatch``: tasks/s through dispatcher + workers, next to Parsl's.

Against the embedded S3 server, with the dispatcher and workers as real
processes (LocalCluster), each *shape* of task in turn:

- ``true``: the command ``true``, no inputs, no outputs;
- ``io``: ``cp`` of one 1 KiB input (its own S3 object per task, digest in
  the spec) to one 1 KiB output that goes to S3.

Each task goes through the whole path: memo lookup at the dispatcher,
sandbox, stage-in, command, stage-out, a result segment. The time runs from
submission to the last completion (the dispatcher's own record of it, so
the bench's polling, once a second, adds nothing to it). Reported per
shape: tasks/s, and CPU per task of the dispatcher, the workers
(themselves, not the commands they ran) and the S3 server. In the same
run: the raw process-spawn rate (``true`` by subprocess in a loop), the
lease round trip (a lease request that finds no work), and the same
commands through Parsl's HighThroughputExecutor with as many workers as
stager has task slots (bench/parsl_dispatch.py, run by the peer tools'
interpreter, where Parsl is installed; skipped, and said so, where it is
not). Parsl's ``io`` tasks read and write the same files on local disk,
which flatters it.

The two sides take turns: each shape's tasks are split into ``rounds``, and
every round runs its share through stager, then through Parsl. A machine
whose speed drifts over minutes (a cloud VM's neighbours) then slows both
sides alike, where one long run of each would hand the drift to one side.
The figures are the sums over the rounds; the ratio of each round is kept
too, so the spread shows.
"""

from __future__ import annotations

import enum
import json
import os
import statistics
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.peers import peer_bin_dir
from stager.digest import digest_bytes
from stager.errors import ConfigError, StagerError
from stager.s3server import LocalS3Server
from worker_hooks.dispatch.client import DispatcherClient
from worker_hooks.dispatch.scheduling import Policy
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.protocol import TaskState
from worker_hooks.task.spec import TaskSpec

BUCKET = "bench-dispatch"
IO_BYTES = 1024


class Shape(enum.Enum):
    TRUE = "true"
    IO = "io"


def spawn_rate(seconds: float = 5.0) -> float:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        subprocess.run(["true"], check=True)
        count += 1
    return count / (time.perf_counter() - started)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a live process has used itself (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ParslFigures:
    tasks: int
    tasks_per_s: float
    seconds: float
    cpu_ms_per_task: float  # all of Parsl's processes (client, interchange, pool, workers)


@dataclass(frozen=True)
class StagerRound:
    done: int
    seconds: float
    submit_s: float
    cpu_s: dict[str, float]  # dispatcher, workers, s3-server: CPU seconds in all


@dataclass(frozen=True)
class ShapeFigures:
    shape: str
    tasks: int
    done: int
    seconds: float
    tasks_per_s: float
    submit_s: float
    cpu_ms_per_task: dict[str, float]  # dispatcher, workers, s3-server
    parsl: ParslFigures | None  # None: Parsl is not installed with the peer tools
    round_ratios: tuple[float, ...] = ()  # stager's tasks/s over Parsl's, round by round

    @property
    def over_parsl(self) -> float | None:
        """stager's tasks/s over Parsl's (above 1: stager is faster)."""
        if self.parsl is None:
            return None
        return round(self.tasks_per_s / self.parsl.tasks_per_s, 3)


@dataclass(frozen=True)
class DispatchFigures:
    workers: int
    slots: int
    raw_spawns_per_s: float
    lease_rtt_median_ms: float
    lease_rtt_p99_ms: float
    shapes: tuple[ShapeFigures, ...]


def _parsl_python() -> Path | None:
    python = peer_bin_dir() / "python"
    if not python.exists():
        return None
    found = subprocess.run([python, "-c", "import parsl"], capture_output=True, check=False)
    return python if found.returncode == 0 else None


def run_parsl(
    work: Path, *, shape: Shape, tasks: int, workers: int, label: str = ""
) -> ParslFigures | None:
    """Parsl's figures for ``tasks`` commands of ``shape`` on ``workers`` workers; None
    where the peer tools' interpreter has no Parsl."""
    python = _parsl_python()
    if python is None:
        return None
    runner = Path(__file__).with_name("parsl_dispatch.py")
    # Parsl starts its interchange and workers as commands: they live beside that Python.
    env = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run_dir = work / f"parsl-{label or shape.value}"
    done = subprocess.run(
        [python, runner, shape.value, str(tasks), str(workers), str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise StagerError(f"the Parsl side of the bench failed: {last}")
    figures = json.loads(lines[-1])
    if figures["failed"]:
        raise StagerError(f"the Parsl side of the bench failed {figures['failed']} tasks")
    return ParslFigures(
        int(figures["tasks"]),
        round(float(figures["tasks_per_s"]), 1),
        round(float(figures["seconds"]), 2),
        round(float(figures["cpu_ms_per_task"]), 3),
    )


def _specs(shape: Shape, numbers: range, server: LocalS3Server) -> list[TaskSpec]:
    """Tasks numbered ``numbers``: a number is never reused, so no round finds the
    results of another in the memo."""
    results = f"s3://{BUCKET}/results/{shape.value}/"
    if shape is Shape.TRUE:
        return [
            parse_spec(
                {"id": f"t{n}", "command": ["true"], "env": {"N": str(n)}, "results": results}
            )
            for n in numbers
        ]
    client = server.client()
    specs = []
    for n in numbers:
        data = n.to_bytes(8, "big") * (IO_BYTES // 8)
        client.put_object(Bucket=BUCKET, Key=f"in/{n}.dat", Body=data)
        body = {
            "id": f"io{n}",
            "command": ["cp", "in.dat", "out.dat"],
            "inputs": [
                {
                    "source": f"s3://{BUCKET}/in/{n}.dat",
                    "path": "in.dat",
                    "digest": str(digest_bytes(data)),
                    "size": len(data),
                }
            ],
            "outputs": [{"path": "out.dat", "to": f"s3://{BUCKET}/out/{n}.dat"}],
            "results": results,
        }
        specs.append(parse_spec(body))
    return specs


def _cpu(pids: Mapping[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_seconds(pid) for pid in group) for name, group in pids.items()}


def _run_round(
    cluster: LocalCluster, server: LocalS3Server, shape: Shape, numbers: range, workflow: str
) -> StagerRound:
    """Tasks ``numbers`` of ``shape`` through stager, as workflow ``workflow``."""
    specs = _specs(shape, numbers, server)
    assert cluster.dispatcher is not None and server.pid is not None
    pids = {
        "dispatcher": [cluster.dispatcher.pid],
        "workers": [process.pid for process in cluster.workers.values()],
        "s3-server": [server.pid],
    }
    client: DispatcherClient = cluster.client
    before = _cpu(pids)
    started = time.perf_counter()
    client.submit(specs, workflow=workflow)
    submit_s = time.perf_counter() - started
    while True:
        status = client.status(workflow)
        if sum(status.count(s) for s in TaskState if s.final) >= len(specs):
            break
        time.sleep(1.0)  # the span is the dispatcher's own; polling less costs it less CPU
    after = _cpu(pids)
    # The dispatcher's span runs from the first task's submission to the last completion;
    # the submit request's own time is added whole (a little more than it took).
    seconds = (status.span_s or 0.0) + submit_s
    cpu = {name: after[name] - before[name] for name in pids}
    return StagerRound(status.count(TaskState.DONE), seconds, submit_s, cpu)


def _shape_figures(
    shape: Shape, tasks: int, stager: list[StagerRound], parsl: list[ParslFigures | None]
) -> ShapeFigures:
    """The rounds of one shape summed: tasks/s over all of them, CPU per task over all."""
    done = sum(r.done for r in stager)
    seconds = sum(r.seconds for r in stager)
    cpu = {
        name: round(sum(r.cpu_s[name] for r in stager) * 1000 / tasks, 3)
        for name in stager[0].cpu_s
    }
    parsl_sum = None
    ratios: tuple[float, ...] = ()
    if all(p is not None for p in parsl):
        rounds = [p for p in parsl if p is not None]
        parsl_s = sum(p.seconds for p in rounds)
        parsl_cpu = sum(p.cpu_ms_per_task * p.tasks for p in rounds)
        parsl_sum = ParslFigures(
            tasks, round(tasks / parsl_s, 1), round(parsl_s, 2), round(parsl_cpu / tasks, 3)
        )
        ratios = tuple(
            round((r.done / r.seconds) / p.tasks_per_s, 3)
            for r, p in zip(stager, rounds, strict=True)
        )
    return ShapeFigures(
        shape=shape.value,
        tasks=tasks,
        done=done,
        seconds=round(seconds, 2),
        tasks_per_s=round(done / seconds, 1),
        submit_s=round(sum(r.submit_s for r in stager), 3),
        cpu_ms_per_task=cpu,
        parsl=parsl_sum,
        round_ratios=ratios,
    )


def _split(tasks: int, rounds: int) -> list[range]:
    """Task numbers ``0 .. tasks - 1`` in ``rounds`` consecutive shares, as even as can be."""
    edges = [tasks * r // rounds for r in range(rounds + 1)]
    return [range(edges[r], edges[r + 1]) for r in range(rounds)]


def run_dispatch_bench(
    work: Path,
    *,
    tasks: int,
    workers: int,
    slots: int,
    shapes: tuple[Shape, ...],
    rounds: int = 3,
) -> DispatchFigures:
    if not 1 <= rounds <= tasks:
        raise ConfigError(f"rounds must be from 1 to the task count ({tasks}), not {rounds}")
    raw = spawn_rate()
    figures = []
    with LocalS3Server(work / "s3") as server:
        server.client().create_bucket(Bucket=BUCKET)
        env = {**server.env(), "STAGER_STATE_DIR": str(work / "state")}
        with LocalCluster(work / "cluster", env, policy=Policy.FIFO) as cluster:
            names = [f"w{n}" for n in range(workers)]
            for name in names:
                cluster.add_worker(name, "--slots", str(slots))
            cluster.wait_for_workers(names)
            rtts = []
            for _ in range(200):
                started = time.perf_counter()
                cluster.client.lease("probe", 1, wait_s=0)
                rtts.append(time.perf_counter() - started)
            for shape in shapes:
                stager: list[StagerRound] = []
                parsl: list[ParslFigures | None] = []
                for number, share in enumerate(_split(tasks, rounds)):
                    label = f"{shape.value}-{number}"
                    stager.append(_run_round(cluster, server, shape, share, label))
                    parsl.append(
                        run_parsl(
                            work,
                            shape=shape,
                            tasks=len(share),
                            workers=workers * slots,
                            label=label,
                        )
                    )
                figures.append(_shape_figures(shape, tasks, stager, parsl))
    rtts.sort()
    return DispatchFigures(
        workers=workers,
        slots=slots,
        raw_spawns_per_s=round(raw, 1),
        lease_rtt_median_ms=round(statistics.median(rtts) * 1000, 3),
        lease_rtt_p99_ms=round(rtts[int(len(rtts) * 0.99) - 1] * 1000, 3),
        shapes=tuple(figures),
    )
