"""Reading the documents users write: task specs and workflows, JSON or YAML.

With :mod:`worker_hooks.task.workflowfile` (a large JSON workflow, read a
task at a time), the one place the task model touches a file; everything it
returns is decoded data for :func:`~worker_hooks.task.spec.parse_spec` and
:func:`~worker_hooks.task.workflow.workflow_tasks` to check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from stager.errors import ConfigError


def load_document(path: Path) -> Any:
    """Decode a JSON file, or YAML for ``.yaml``/``.yml``; errors name the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        return json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}"
        ) from exc
