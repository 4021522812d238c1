"""The ``stager`` command's entry point.

``stager --version`` answers before anything else is imported (not even
click); every other invocation runs :func:`stager.cli.root.main`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Console entry point (see :mod:`stager.cli.root`)."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        from stager import __version__

        sys.stdout.write(f"stager, version {__version__}\n")
        sys.exit(0)
    from stager.cli.root import main as run

    run(args)
