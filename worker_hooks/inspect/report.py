"""``stager report WORKFLOW``: one HTML page on how a workflow ran.

- A timeline per node (a Gantt chart): every attempt of every task as a bar
  on the worker that ran it, coloured by how it ended.
- Where input bytes came from, per node: S3, the node's own cache (or the
  NFS head), peers.
- The figures a user asks first (tasks by state, memo hits, makespan) and
  the failed tasks with their reason.

The charts are drawn with matplotlib as inline SVG, so the page is one file
that opens anywhere, offline.
"""

from __future__ import annotations

import html
import io
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from stager.errors import ConfigError
from stager.units import format_size
from worker_hooks.task.protocol import AttemptInfo, TaskState, WorkflowReport

COLOURS = {
    "done": "#2e7d32",
    "failed": "#c62828",
    "expired": "#9e9e9e",
    "lost": "#6d4c41",
    "handed back": "#f9a825",
    "withdrawn": "#bdbdbd",
    None: "#1565c0",  # still running
}


@dataclass(frozen=True)
class _Bar:
    worker: str
    start: float
    end: float
    outcome: str | None


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(
            "stager report draws with matplotlib, which is not installed",
            hint="pip install 'stager[report]'",
        ) from exc
    return plt


def _svg(figure: Any) -> str:
    out = io.StringIO()
    figure.savefig(out, format="svg", bbox_inches="tight")
    text = out.getvalue()
    return text[text.index("<svg") :]  # the XML prologue does not belong inside HTML


def _bars(report: WorkflowReport, now: float) -> list[_Bar]:
    attempts: list[AttemptInfo] = [a for t in report.tasks for a in t.attempts]
    return [_Bar(a.worker, a.started_at, a.ended_at or now, a.outcome) for a in attempts]


def timeline_svg(report: WorkflowReport, now: float) -> str:
    """The Gantt chart: one row per worker, one bar per attempt, seconds from the start."""
    plt = _pyplot()
    bars = _bars(report, now)
    workers = sorted({b.worker for b in bars})
    figure, axes = plt.subplots(figsize=(11, 1.2 + 0.45 * max(1, len(workers))))
    origin = min((b.start for b in bars), default=now)
    for bar in bars:
        axes.barh(
            workers.index(bar.worker),
            max(bar.end - bar.start, 0.002),
            left=bar.start - origin,
            color=COLOURS.get(bar.outcome, "#1565c0"),
            edgecolor="white",
            linewidth=0.3,
        )
    axes.set_yticks(range(len(workers)), workers)
    axes.set_xlabel("seconds since the first lease")
    axes.set_title(f"{report.workflow}: attempts per node")
    seen = sorted({b.outcome or "running" for b in bars})
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=COLOURS.get(None if o == "running" else o)) for o in seen
    ]
    axes.legend(handles, seen, loc="upper right", fontsize="small")
    axes.invert_yaxis()
    text = _svg(figure)
    plt.close(figure)
    return text


def sources_svg(report: WorkflowReport) -> str:
    """Input bytes per node by where they came from (the node of each task's last attempt)."""
    plt = _pyplot()
    by_node: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for task in report.tasks:
        if not task.attempts:
            continue
        row = by_node[task.attempts[-1].worker]
        row[0] += task.bytes_from_s3
        row[1] += task.bytes_from_cache - task.bytes_from_peers
        row[2] += task.bytes_from_peers
    nodes = sorted(by_node)
    figure, axes = plt.subplots(figsize=(11, 1.2 + 0.45 * max(1, len(nodes))))
    left = [0.0] * len(nodes)
    for column, (label, colour) in enumerate(
        (("S3", "#ef6c00"), ("own cache", "#2e7d32"), ("peers", "#6a1b9a"))
    ):
        values = [by_node[n][column] / 2**20 for n in nodes]
        axes.barh(range(len(nodes)), values, left=left, color=colour, label=label)
        left = [a + b for a, b in zip(left, values, strict=True)]
    axes.set_yticks(range(len(nodes)), nodes)
    axes.set_xlabel("input MiB")
    axes.set_title("where each node's input bytes came from")
    axes.legend(loc="lower right", fontsize="small")
    axes.invert_yaxis()
    text = _svg(figure)
    plt.close(figure)
    return text


def render_report(report: WorkflowReport, now: float) -> str:
    """The whole page."""
    tasks = report.tasks
    counts = {state: sum(t.state is state for t in tasks) for state in TaskState}
    starts = [a.started_at for t in tasks for a in t.attempts]
    ends = [a.ended_at for t in tasks for a in t.attempts if a.ended_at is not None]
    span = f"{max(ends) - min(starts):.1f} s" if starts and ends else "-"
    from_s3 = sum(t.bytes_from_s3 for t in tasks)
    from_cache = sum(t.bytes_from_cache for t in tasks)
    failed = [t for t in tasks if t.state is TaskState.FAILED]
    rows = "".join(
        f"<tr><td>{html.escape(t.id)}</td><td>{html.escape(t.error or '')}</td></tr>"
        for t in failed[:200]
    )
    title = html.escape(report.workflow)
    state_cells = "".join(f"<td>{counts[s]} {s.value}</td>" for s in TaskState)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stager report: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
section {{ margin: 2em 0; }}
</style></head><body>
<h1>Workflow {title}</h1>
<table id="summary"><tr>{state_cells}</tr></table>
<p>{len(tasks)} tasks, {sum(len(t.attempts) for t in tasks)} attempts,
{sum(t.memoized for t in tasks)} found done before (memo); makespan {span};
inputs {format_size(from_s3)} from S3, {format_size(from_cache)} from node caches
({format_size(sum(t.bytes_from_peers for t in tasks))} of it from peers).</p>
<section id="timeline"><h2>Timeline per node</h2>{timeline_svg(report, now)}</section>
<section id="sources"><h2>Where input bytes came from</h2>{sources_svg(report)}</section>
<section id="failed"><h2>Failed tasks ({len(failed)})</h2>
<table><tr><th>task</th><th>reason</th></tr>{rows}</table></section>
</body></html>
"""
