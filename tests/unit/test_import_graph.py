"""The import rules of DESIGN.md §3 and worker_hooks/__init__.py, checked on the source.

Each rule names a package (or room) and the module prefixes it must not
import; the static check reads every ``import`` in the room's files (lazy
ones inside functions included). The dispatcher's rule is also checked as a
running process sees it: importing the dispatch room loads no node code and
no S3 client, however indirectly.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
S3_CLIENTS = ("boto3", "botocore", "awscrt", "s3transfer", "s3fs", "aiobotocore")
ROOMS = ("task", "wrap", "dispatch", "worker", "local", "inspect")


def room(name: str) -> tuple[str, ...]:
    return tuple(f"worker_hooks.{other}" for other in ROOMS if other != name)


RULES: dict[str, tuple[str, ...]] = {
    "stager": ("fsd", "worker_hooks", "bench"),
    "fsd": ("worker_hooks", "bench"),
    "worker_hooks/task": (
        "fsd",
        *S3_CLIENTS,
        "aiohttp",
        "urllib3",
        "stager.http1",
        "stager.objectstore",
        "stager.crt",
        "stager.cli",
        *room("task"),
    ),
    "worker_hooks/wrap": tuple(r for r in room("wrap") if r != "worker_hooks.task"),
    "worker_hooks/dispatch": (
        "fsd",
        *S3_CLIENTS,
        "stager.objectstore",
        "stager.crt",
        *(r for r in room("dispatch") if r != "worker_hooks.task"),
    ),
    "worker_hooks/worker": ("worker_hooks.local", "worker_hooks.inspect"),
    "worker_hooks/inspect": (
        "fsd",
        *(r for r in room("inspect") if r not in ("worker_hooks.task", "worker_hooks.dispatch")),
    ),
}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def refused(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("package", sorted(RULES))
def test_imports_flow_one_way(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}"
    broken = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in sorted(imports_of(path))
        if refused(name, RULES[package])
    ]
    assert broken == []


def test_the_checker_sees_a_broken_rule(tmp_path: Path) -> None:
    source = tmp_path / "bad.py"
    source.write_text("def later():\n    from fsd.cache import NodeCache\n")
    assert refused("fsd.cache", RULES["worker_hooks/dispatch"])
    assert "fsd.cache" in imports_of(source)


def test_the_dispatcher_process_loads_no_node_code_and_no_s3_client() -> None:
    probe = (
        "import sys\n"
        "import stager.cli, worker_hooks.dispatch.cli, worker_hooks.dispatch.server\n"
        "import worker_hooks.dispatch.follow, worker_hooks.task.workflow\n"
        f"bad = {RULES['worker_hooks/dispatch']!r}\n"
        "print(sorted(m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in bad)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert loaded.stdout.strip() == "[]"
