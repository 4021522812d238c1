"""``stager bench ...``: measurements side by side with the tools people use today."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import click

from bench.peers import TOOLS, peer_bin_dir
from bench.report import conditions, transfer_markdown, transfer_plot, write_json
from bench.transfer import TIME_BINARY, WORKLOADS, TransferBench, available_tools, endpoint_of
from stager.errors import ConfigError
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server


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
""",
)
@click.option("--scale", default=1.0, show_default=True, help="Shrink the workloads (0.1: quick).")
@click.option(
    "--tools",
    default=",".join(TOOLS),
    show_default=True,
    help="Comma-separated tools to measure.",
)
@click.option(
    "--workloads",
    default=",".join(w.name for w in WORKLOADS),
    show_default=True,
    help="Comma-separated workloads.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench/results"),
    show_default=True,
    help="Where the JSON, markdown and PNG go.",
)
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
            endpoint = endpoint_of(
                settings, server.credentials.access_key, server.credentials.secret_key
            )
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
