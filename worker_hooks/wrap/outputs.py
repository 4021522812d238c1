"""Finding a finished task's declared outputs in its sandbox, safely.

Each declaration (a file, a directory ending in '/', or a glob) expands to
files and their destinations. A declaration that matches nothing raises
:class:`MissingOutputError`; anything that resolves outside the sandbox (a
symlink the command made to ``/etc/passwd``, say) raises
:class:`UnsafePathError` rather than being uploaded.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from stager.errors import ConfigError, MissingOutputError, UnsafePathError
from stager.locations import S3Url
from worker_hooks.task.result import Persist
from worker_hooks.task.spec import GLOB_CHARACTERS, OutputKind, OutputSpec


@dataclass(frozen=True)
class FoundOutput:
    path: Path
    relative: str
    url: S3Url
    size: int
    persist: Persist = Persist.S3
    mirrors: int = 1


class _Finder:
    def __init__(self, sandbox: Path) -> None:
        self.sandbox = sandbox

    def found(self, path: Path, url: S3Url) -> FoundOutput:
        relative = path.relative_to(self.sandbox).as_posix()
        size = self._plain_size(relative)
        if size is None:
            size = self._size_through_links(path, relative)
        return FoundOutput(path, relative, url, size)

    def _plain_size(self, relative: str) -> int | None:
        """The size of a regular file reached from the sandbox through real folders
        only, the usual case (one ``lstat`` per name); None if anything else is on
        the way, for :meth:`_size_through_links` to judge."""
        current = os.fspath(self.sandbox)
        *folders, name = relative.split("/")
        try:
            for folder in folders:
                current = os.path.join(current, folder)
                if not stat.S_ISDIR(os.lstat(current).st_mode):
                    return None
            info = os.lstat(os.path.join(current, name))
        except OSError:
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def _size_through_links(self, path: Path, relative: str) -> int:
        """The size of the file ``path`` leads to, if that is a regular file inside the sandbox."""
        if not os.path.lexists(path):
            raise MissingOutputError(f"the command did not write output {relative}")
        real = path.resolve()
        if not real.is_relative_to(self.sandbox.resolve()):
            raise UnsafePathError(
                f"output {relative} is a link that leads outside the sandbox (to {real})",
                hint="write outputs as files inside the sandbox, not links to elsewhere",
            )
        if not real.is_file():
            raise MissingOutputError(f"output {relative} is not a regular file")
        return real.stat().st_size

    def file(self, output: OutputSpec) -> list[FoundOutput]:
        path = self.sandbox / output.path
        url = output.to.child(path.name) if output.to.is_prefix else output.to
        return [self.found(path, url)]

    def directory(self, output: OutputSpec) -> list[FoundOutput]:
        root = self.sandbox / output.path.rstrip("/")
        if root.is_symlink() or not root.is_dir():
            raise MissingOutputError(f"the command did not make directory {output.path}")
        found = []
        for parent, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                path = Path(parent, name)
                found.append(self.found(path, output.to.child(path.relative_to(root).as_posix())))
        return found

    def glob(self, output: OutputSpec) -> list[FoundOutput]:
        pattern = PurePosixPath(output.path)
        fixed = []
        for part in pattern.parts:
            if GLOB_CHARACTERS & set(part):
                break
            fixed.append(part)
        base = self.sandbox.joinpath(*fixed)
        matches = sorted(p for p in self.sandbox.glob(output.path) if p.is_file())
        if not matches:
            raise MissingOutputError(f"no file matches output pattern {output.path}")
        return [self.found(p, output.to.child(p.relative_to(base).as_posix())) for p in matches]


def find_outputs(sandbox: Path, outputs: Sequence[OutputSpec]) -> list[FoundOutput]:
    """Every file the declarations name, with its destination; two to one key is refused."""
    finder = _Finder(sandbox)
    expand = {
        OutputKind.FILE: finder.file,
        OutputKind.DIR: finder.directory,
        OutputKind.GLOB: finder.glob,
    }
    found = [
        replace(item, persist=output.persist, mirrors=output.mirrors)
        for output in outputs
        for item in expand[output.kind](output)
    ]
    seen: dict[S3Url, str] = {}
    for item in found:
        if item.url in seen and seen[item.url] != item.relative:
            raise ConfigError(f"outputs {seen[item.url]} and {item.relative} both go to {item.url}")
        seen[item.url] = item.relative
    unique = {item.url: item for item in found}
    return list(unique.values())
