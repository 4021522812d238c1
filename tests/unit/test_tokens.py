"""Dispatcher tokens: one clean line, checked when read, never shown in an error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stager.errors import ConfigError
from stager.tokens import TOKEN_ENV, check_token, load_token, server_token
from worker_hooks.dispatch.client import DispatcherClient

GOOD = "Zx8_-" * 8
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("SECRETPART1-aaaaaa\nSECRETPART2-bbbbbb", "more than one line"),
        ("SECRETPART1-aaaaaa\rSECRETPART2", "more than one line"),
        ("SECRETPART1 SECRETPART2", "blank, control or non-ASCII"),
        ("SECRETPART1\x00SECRETPART2", "blank, control or non-ASCII"),
        ("SECRETPART1\u00e9SECRETPART2", "blank, control or non-ASCII"),
        ("SECRETPART", "10 characters long"),
        ("S" * 5000, "5000 characters long"),
        ("  \n", "no dispatcher token"),
    ],
)
def test_a_bad_token_is_refused_without_showing_it(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_token(text, "token file t")
    assert problem in caught.value.message
    assert "SECRETPART" not in caught.value.one_line() and "SSSS" not in caught.value.one_line()


def test_a_token_file_may_end_in_a_newline(tmp_path: Path) -> None:
    (tmp_path / "t").write_text(GOOD + "\n")
    assert load_token(tmp_path / "t") == GOOD


def test_the_client_and_the_server_refuse_a_token_that_cannot_be_a_header(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="more than one line"):
        DispatcherClient("http://127.0.0.1:1", "SECRET\nInjected: yes")
    (tmp_path / "t").write_text("SECRETPART1-aaaaaa\nSECRETPART2-bbbbbb\n")
    with pytest.raises(ConfigError, match="more than one line"):
        server_token(tmp_path / "t", tmp_path / "unused")


def test_a_new_server_token_is_saved_for_its_owner_only(tmp_path: Path) -> None:
    token, path = server_token(None, tmp_path / "state" / "dispatcher.token")
    assert path is not None and (path.stat().st_mode & 0o777) == 0o600
    assert load_token(path) == token


@pytest.mark.parametrize("command", ["status", "worker"])
def test_the_commands_say_what_is_wrong_in_one_line_and_never_the_token(
    tmp_path: Path, command: str
) -> None:
    (tmp_path / "t").write_text("SECRETPART1-aaaaaa\nSECRETPART2-bbbbbb\n")
    args = [sys.executable, "-m", "stager", command, "--dispatcher", "http://127.0.0.1:1"]
    args += ["--token-file", str(tmp_path / "t")]
    if command == "worker":
        args += ["--cache-dir", str(tmp_path / "c"), "--sandbox-dir", str(tmp_path / "s")]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "spans more than one line" in done.stderr
    assert "SECRETPART" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    env[TOKEN_ENV] = "SECRETPART1\u00e9SECRETPART2"
    done = subprocess.run(args[:6], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "non-ASCII character" in done.stderr, done.stderr
    assert "SECRETPART" not in done.stderr + done.stdout
