"""The environment a task's command runs in: clean, not the wrapper's own.

A worker's environment holds secrets a task has no business with (S3 keys,
the dispatcher's token). A task gets only:

- ``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``, ``TERM``, ``TZ``,
  ``LANG``, ``LANGUAGE`` and ``LC_*`` from the wrapper's environment;
- ``TMPDIR`` (and ``TMP``, ``TEMP``) inside its sandbox, removed with it;
- ``STAGER_TASK_ID`` and ``STAGER_SANDBOX``;
- the variables its spec's ``pass_env`` names, and those the wrapper was
  told to pass to every task (``--pass-env NAME``), when they are set;
- what its spec's ``env`` sets, which wins over everything above.

S3 credentials reach a task only when one of those lists names them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from stager.errors import ConfigError
from worker_hooks.task.parse import ENV_NAME_RE
from worker_hooks.task.spec import TaskSpec

KEPT = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TZ", "LANG", "LANGUAGE"})
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
SANDBOX_VARIABLE = "STAGER_SANDBOX"  # also how a sweep finds a command left running


def checked_names(names: Iterable[str]) -> tuple[str, ...]:
    """``--pass-env`` values: variable names, nothing else."""
    for name in names:
        if not ENV_NAME_RE.match(name):
            raise ConfigError(f"--pass-env {name!r} is not a variable name")
    return tuple(names)


def task_environment(
    spec: TaskSpec,
    *,
    work: Path,
    tmp: Path,
    pass_env: Iterable[str],
    source: Mapping[str, str],
) -> dict[str, str]:
    """The environment for ``spec``'s command; ``source`` is the wrapper's own."""
    passed = {*spec.pass_env, *pass_env}
    env = {
        name: value
        for name, value in source.items()
        if name in KEPT or name.startswith("LC_") or name in passed
    }
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(
        TMPDIR=str(tmp),
        TMP=str(tmp),
        TEMP=str(tmp),
        STAGER_TASK_ID=spec.id,
    )
    env[SANDBOX_VARIABLE] = str(work)
    env.update(spec.env)
    return env
