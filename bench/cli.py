"""``stager bench ...``: measurements side by side with the tools people use today."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import click

from bench.chaos import ChaosShape, chaos_markdown, run_chaos_bench
from bench.dispatch import Shape, run_dispatch_bench
from bench.dispatcher_scale import run_scale_bench
from bench.faultproxy import NO_FAULTS, Faults
from bench.nodes import nodes_markdown, run_nodes_bench
from bench.peers import DEFAULT_TOOLS, TOOLS, Endpoint, peer_bin_dir
from bench.report import conditions, transfer_markdown, transfer_plot, write_json
from bench.transfer import TIME_BINARY, WORKLOADS, TransferBench, available_tools
from bench.workflow import run_workflow_bench
from stager.errors import ConfigError, IntegrityError
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server
from stager.units import format_size, parse_size

out_option = click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench/results"),
    show_default=True,
    help="Where the JSON, markdown and PNG go.",
)


@click.group("bench")
def bench_group() -> None:
    """Benchmarks (peer tools come from `make bench`, in .venv-bench)."""


@bench_group.command(
    "transfer",
    epilog="""\b
Examples:
  stager bench transfer --scale 0.1                 # the quick run (make bench)
  stager bench transfer                             # full size: 1 GiB, 10 x 100 MiB, ...
  stager bench transfer --tools stager,s5cmd --workloads many-small
  stager bench transfer --scale 0.1 --tools stager,stager-s3transfer   # the two byte movers
""",
)
@click.option("--scale", default=1.0, show_default=True, help="Shrink the workloads (0.1: quick).")
@click.option(
    "--tools",
    default=",".join(DEFAULT_TOOLS),
    show_default=True,
    help=f"Comma-separated tools to measure, of: {', '.join(TOOLS)}.",
)
@click.option(
    "--workloads",
    default=",".join(w.name for w in WORKLOADS),
    show_default=True,
    help="Comma-separated workloads.",
)
@out_option
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Scratch for files and the server [a temporary directory].",
)
def transfer_command(
    scale: float, tools: str, workloads: str, out: Path, work_dir: Path | None
) -> None:
    """Upload and cold download for stager, s5cmd, aws cli, rclone and s3fs.

    Runs against the embedded SeaweedFS on loopback; every tool moves the
    same files, every transfer is checked byte for byte, and the report
    gives each peer's time as a ratio to stager's.
    """
    unknown = sorted(set(tools.split(",")) - set(TOOLS))
    if unknown:
        raise ConfigError(f"unknown tool {unknown[0]!r}", hint=f"choose from {', '.join(TOOLS)}")
    by_name = {w.name: w for w in WORKLOADS}
    chosen = [by_name[n].scaled(scale) for n in workloads.split(",") if n in by_name]
    if not chosen:
        raise ConfigError(f"no known workload in {workloads!r}")
    if not Path(TIME_BINARY).exists():
        raise ConfigError(
            f"{TIME_BINARY} (GNU time) is needed to measure peak memory",
            hint="install it: apt-get install time",
        )
    present, missing = available_tools(tools.split(","))
    if missing:
        click.echo(
            f"not installed (run `make bench`, or set STAGER_BENCH_PEERS): {', '.join(missing)} "
            f"[looked in {peer_bin_dir()}]",
            err=True,
        )
    with tempfile.TemporaryDirectory(prefix="stager-bench-", dir=work_dir) as scratch:
        root = Path(scratch)
        with LocalS3Server(root / "s3") as server:
            settings = server.settings(state_dir=root / "state", progress=False)
            endpoint = Endpoint.of(server)
            with ObjectStore(settings, credentials=server.credentials) as store:
                bench = TransferBench(store, endpoint, root / "work", tools=present, log=click.echo)
                report = bench.run(
                    chosen,
                    conditions(
                        {
                            "scale": scale,
                            "workloads": {w.name: w.label for w in chosen},
                            "server": "embedded SeaweedFS on loopback (shares the CPUs)",
                            "not_installed": missing,
                        }
                    ),
                )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    data = report.to_json()
    write_json(data, out / f"transfer-{stamp}.json")
    markdown = transfer_markdown(data)
    (out / f"transfer-{stamp}.md").write_text(markdown)
    plotted = transfer_plot(data, out / f"transfer-{stamp}.png")
    click.echo(markdown)
    click.echo(
        f"wrote {out}/transfer-{stamp}.json, .md" + (", .png" if plotted else " (no matplotlib)")
    )
    failed = [r for r in report.runs if not r.ok]
    if failed:
        raise ConfigError(
            f"{len(failed)} runs failed or delivered wrong bytes: "
            + "; ".join(f"{r.tool} {r.workload} {r.direction}: {r.note}" for r in failed[:3])
        )


def _save(out: Path, name: str, data: dict[str, object], markdown: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    write_json(data, out / f"{name}-{stamp}.json")
    (out / f"{name}-{stamp}.md").write_text(markdown)
    click.echo(markdown)
    click.echo(f"wrote {out}/{name}-{stamp}.json, .md")


RUN_LABELS = {
    "stager": "stager (node caches, data-aware)",
    "foreign": "stager, reference written by plain boto3 (no digest anywhere)",
    "shared": "stager, shared mode (one cache for all nodes)",
    "naive": "naive ({downloader} per task)",
}


@bench_group.command(
    "workflow",
    epilog="""\b
Examples:
  stager bench workflow                        # 30 tasks, 3 workers, 128 MiB reference
  stager bench workflow --tasks 100 --reference-mib 1024
  stager bench workflow --shared-dir /mnt/nfs/stager   # the shared mode on a real mount
""",
)
@click.option("--tasks", default=30, show_default=True)
@click.option("--workers", default=3, show_default=True)
@click.option("--reference-mib", default=128, show_default=True)
@click.option(
    "--shared-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the shared mode's cache goes (e.g. an NFS mount) [a local scratch directory].",
)
@out_option
def workflow_command(
    tasks: int, workers: int, reference_mib: int, shared_dir: Path | None, out: Path
) -> None:
    """Data diffusion: stager's caches vs a per-task-download job script vs the ideal."""
    with tempfile.TemporaryDirectory(prefix="stager-bench-") as scratch:
        f = run_workflow_bench(
            Path(scratch),
            tasks=tasks,
            workers=workers,
            reference_bytes=reference_mib * 1024 * 1024,
            log=click.echo,
            shared_dir=shared_dir,
        )
    data = {**f.to_json(), "conditions": conditions({})}
    rows = "".join(
        f"| {RUN_LABELS[r.mode].format(downloader=f.downloader)} | {r.makespan_s:.1f} s "
        f"| {format_size(r.bytes_from_s3)} |\n"
        for r in f.runs
    )
    markdown = (
        "| run | makespan | read from S3 |\n|---|---|---|\n"
        f"{rows}"
        f"| ideal | {f.ideal_makespan_s:.1f} s | {format_size(f.reference_bytes)} x nodes |\n"
        f"| ideal on this machine ({f.workers} downloads at once) | {f.ideal_here_s:.1f} s "
        f"| {format_size(f.reference_bytes)} x nodes |\n\n"
        f"{f.tasks} tasks, {f.workers} workers, reference {format_size(f.reference_bytes)}, "
        f"shared cache in {f.shared_dir}; naive/stager {data['naive_over_stager']}, "
        f"stager/ideal {data['stager_over_ideal']} (on this machine "
        f"{data['stager_over_ideal_here']}), shared/ideal {data['shared_over_ideal']}, "
        f"reference without a digest/pushed {data['foreign_over_stager']}\n"
    )
    _save(out, "workflow", data, markdown)


@bench_group.command(
    "dispatch",
    epilog="""\b
Examples:
  stager bench dispatch --tasks 1000
  stager bench dispatch --tasks 5000 --workers 2 --slots 4
  stager bench dispatch --tasks 2000 --shapes io
  stager bench dispatch --tasks 5000 --shapes io --rounds 5
""",
)
@click.option("--tasks", default=1000, show_default=True, help="Tasks of each shape.")
@click.option("--workers", default=2, show_default=True)
@click.option("--slots", default=1, show_default=True, help="Tasks per worker at once.")
@click.option(
    "--shapes",
    default="true,io",
    show_default=True,
    help="Comma-separated: true (no files), io (one 1 KiB input, one 1 KiB output).",
)
@click.option(
    "--rounds",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Turns each side takes (stager's share, then Parsl's), so drift hits both.",
)
@out_option
def dispatch_command(
    tasks: int, workers: int, slots: int, shapes: str, rounds: int, out: Path
) -> None:
    """Tasks/s through the whole path (dispatcher, workers, S3), next to the raw spawn
    rate and to Parsl's HighThroughputExecutor running the same commands, the two
    taking turns."""
    try:
        chosen = tuple(Shape(name.strip()) for name in shapes.split(",") if name.strip())
    except ValueError as exc:
        raise click.BadParameter(f"{exc}; choose from true, io", param_hint="--shapes") from exc
    with tempfile.TemporaryDirectory(prefix="stager-bench-") as scratch:
        f = run_dispatch_bench(
            Path(scratch), tasks=tasks, workers=workers, slots=slots, shapes=chosen, rounds=rounds
        )
    data = {
        **asdict(f),
        "over_parsl": {s.shape: s.over_parsl for s in f.shapes},
        "conditions": conditions({}),
    }
    lines = [
        f"{f.workers} workers x {f.slots} slots; raw spawn rate {f.raw_spawns_per_s}/s "
        f"(subprocess.run in a loop); lease round trip median {f.lease_rtt_median_ms} ms, "
        f"p99 {f.lease_rtt_p99_ms} ms.",
        "",
        "| shape | done | stager tasks/s | Parsl tasks/s | stager/Parsl | by round | CPU ms/task:"
        " dispatcher, workers, S3 server | Parsl CPU ms/task |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in f.shapes:
        cpu = ", ".join(str(v) for v in s.cpu_ms_per_task.values())
        parsl = s.parsl
        lines.append(
            f"| {s.shape} | {s.done}/{s.tasks} | {s.tasks_per_s} | "
            f"{parsl.tasks_per_s if parsl else '-'} | **{s.over_parsl or '-'}** | "
            f"{', '.join(str(r) for r in s.round_ratios) or '-'} | {cpu} | "
            f"{parsl.cpu_ms_per_task if parsl else '-'} |"
        )
    if any(s.parsl is None for s in f.shapes):
        lines.append("\nParsl: not installed with the peer tools (make .venv-bench/.installed).")
    _save(out, "dispatch", data, "\n".join(lines) + "\n")


@bench_group.command(
    "parsl",
    epilog="""\b
Examples:
  stager bench parsl
  stager bench parsl --samples 32 --reference-mib 256
""",
)
@click.option("--samples", default=16, show_default=True, help="align tasks (one sample each).")
@click.option("--reference-mib", default=64, show_default=True, help="The shared reference.")
@out_option
def parsl_command(samples: int, reference_mib: int, out: Path) -> None:
    """The Parsl example workflow (worker_hooks/parsl/example.py) staged by stager and by plain
    boto3, on two LocalProvider blocks: bytes read from S3 and makespan of each."""
    from bench.parsl_staging import run_parsl_staging_bench  # needs Parsl: stager[parsl]

    with tempfile.TemporaryDirectory(prefix="stager-bench-") as scratch:
        f = run_parsl_staging_bench(Path(scratch), samples=samples, reference_mib=reference_mib)
    data = {**asdict(f), "plain_over_stager": f.plain_over_stager, "conditions": conditions({})}
    rows = "".join(f"| {r.provider} | {r.seconds} | {r.mib_from_s3} |\n" for r in f.runs)
    ratio = f.plain_over_stager
    markdown = (
        f"{f.samples} align tasks sharing a {f.reference_mib} MiB reference, then a gather; "
        "two LocalProvider blocks (two nodes), two workers each.\n\n"
        "| staging | makespan s | MiB read from S3 |\n|---|---|---|\n"
        f"{rows}\nplain/stager: makespan **{ratio['seconds']}x**, bytes from S3 "
        f"**{ratio['mib_from_s3']}x**.\n"
    )
    _save(out, "parsl", data, markdown)


@bench_group.command(
    "dispatcher-scale",
    epilog="""\b
Examples:
  stager bench dispatcher-scale                                   # 1,000,000 tasks, 1,000 workers
  stager bench dispatcher-scale --tasks 100000 --workers 200 --duration-s 20   # quicker
""",
)
@click.option("--tasks", default=1_000_000, show_default=True, help="Tasks submitted.")
@click.option("--workers", default=1000, show_default=True, help="Simulated one-slot workers.")
@click.option("--processes", default=4, show_default=True, help="Processes they run in.")
@click.option("--task-s", default=1.0, show_default=True, help="How long each holds a task.")
@click.option("--heartbeat-s", default=10.0, show_default=True, help="Heartbeat interval.")
@click.option("--duration-s", default=30.0, show_default=True, help="How long the load runs.")
@out_option
def dispatcher_scale_command(
    tasks: int,
    workers: int,
    processes: int,
    task_s: float,
    heartbeat_s: float,
    duration_s: float,
    out: Path,
) -> None:
    """One dispatcher under many tasks and many simulated workers: submission time and
    memory, lease round trip, completions/s, database size."""
    with tempfile.TemporaryDirectory(prefix="stager-bench-") as scratch:
        f = run_scale_bench(
            Path(scratch),
            tasks=tasks,
            workers=workers,
            processes=processes,
            task_s=task_s,
            heartbeat_s=heartbeat_s,
            duration_s=duration_s,
        )
    data = {**asdict(f), "conditions": conditions({})}
    markdown = (
        f"{f.tasks} tasks submitted in {f.submit_s} s ({f.submitted_per_s}/s); dispatcher peak "
        f"RSS {f.dispatcher_rss_mib} MiB. {f.workers} simulated workers in {f.processes} "
        f"processes, each task held {f.task_s} s, for {f.duration_s} s: {f.completions} "
        f"completions ({f.completions_per_s}/s), lease round trip p50 {f.lease_rtt_p50_ms} ms, "
        f"p99 {f.lease_rtt_p99_ms} ms, {f.lease_errors} errors; database {f.db_mib} MiB.\n"
    )
    _save(out, "dispatcher-scale", data, markdown)


@bench_group.command(
    "nodes",
    epilog="""\b
Examples:
  stager bench nodes                                   # 1 GiB fetch, 256 MiB outputs
  stager bench nodes --fetch-size 128M --output-size 32M   # quick
""",
)
@click.option("--fetch-size", default="1G", show_default=True, help="Object fetched from each.")
@click.option("--output-size", default="256M", show_default=True, help="Output per policy.")
@out_option
def nodes_command(fetch_size: str, output_size: str, out: Path) -> None:
    """Peer fetch next to S3 GET; time to done under s3, mirror and local; the
    fall-back delay for a dead peer (network namespaces; skipped without them)."""
    with tempfile.TemporaryDirectory(prefix="stager-bench-") as scratch:
        figures = run_nodes_bench(
            Path(scratch), fetch_bytes=parse_size(fetch_size), output_bytes=parse_size(output_size)
        )
    data = {**asdict(figures), "conditions": conditions({})}
    _save(out, "nodes", data, nodes_markdown(figures))


@bench_group.command(
    "chaos",
    epilog="""\b
Examples:
  stager bench chaos                                 # the soak: 1,000 tasks, 4 workers, 10 kills
  stager bench chaos --tasks 100 --kills 2 --workers 3   # the short one (as in CI)
  stager bench chaos --no-s3-faults --stops 0        # what the kills alone cost
""",
)
@click.option("--tasks", default=1000, show_default=True)
@click.option("--workers", default=4, show_default=True)
@click.option("--kills", default=10, show_default=True, help="Workers killed (and wiped).")
@click.option("--stops", default=1, show_default=True, help="Workers stopped past their lease.")
@click.option(
    "--s3-faults/--no-s3-faults",
    default=True,
    show_default=True,
    help="Make the proxy in front of S3 fail requests (off: only kills and stops).",
)
@click.option("--seed", default=11, show_default=True, help="Seed of the fault schedule.")
@out_option
def chaos_command(
    tasks: int, workers: int, kills: int, stops: int, s3_faults: bool, seed: int, out: Path
) -> None:
    """A workflow with every persistence policy, undisturbed and then under kill -9s,
    a worker stopped past its lease and a proxy that makes S3 fail; what was lost,
    missing or corrupt (all must be 0) and what the faults cost. Both runs reach S3
    through the same proxy (the undisturbed one with no faults)."""
    faults = Faults() if s3_faults else NO_FAULTS
    shape = ChaosShape(
        tasks=tasks, workers=workers, kills=kills, stops=stops, faults=faults, seed=seed
    )
    with tempfile.TemporaryDirectory(prefix="stager-bench-") as scratch:
        figures = run_chaos_bench(Path(scratch), shape)
    data = {**asdict(figures), "conditions": conditions({})}
    _save(out, "chaos", data, chaos_markdown(figures))
    bad = figures.chaos.lost + figures.chaos.missing + figures.chaos.corrupt
    if bad:
        raise IntegrityError(
            f"the soak lost or damaged {bad} tasks or outputs",
            hint=f"the report names them: {out}",
        )
