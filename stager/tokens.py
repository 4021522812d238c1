"""The cluster token: where it comes from and what it may hold.

One secret per cluster. The dispatcher takes it as a bearer token; the
node file service (:mod:`fsd.peerauth`) only ever sees HMACs keyed from it,
so a node that serves files never receives the token itself. A token is
one line of printable ASCII (no blanks), 16 to 4096 characters: it
travels in an HTTP header, so anything else (a second line pasted into the
file, a stray byte) is refused when the token is read, with a message
that says what is wrong and never shows the token itself.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from stager.errors import ConfigError, from_os_error

TOKEN_ENV = "STAGER_DISPATCHER_TOKEN"
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 4096
_HINT = "a token is one line of 16-4096 printable ASCII characters, such as a new one makes"


def check_token(text: str, where: str, *, min_chars: int = MIN_TOKEN_CHARS) -> str:
    """``text`` without surrounding blanks, if it is a valid token; never echoes it."""
    token = text.strip()
    if not token:
        raise ConfigError(
            f"no dispatcher token in {where}",
            hint=f"give --token-file FILE or set {TOKEN_ENV} (see docs/dispatcher.md)",
        )
    if "\n" in token or "\r" in token:
        raise ConfigError(f"the token in {where} spans more than one line", hint=_HINT)
    if not all("!" <= char <= "~" for char in token):
        raise ConfigError(
            f"the token in {where} holds a blank, control or non-ASCII character", hint=_HINT
        )
    if not min_chars <= len(token) <= MAX_TOKEN_CHARS:
        raise ConfigError(f"the token in {where} is {len(token)} characters long", hint=_HINT)
    return token


def load_token(token_file: Path | None) -> str:
    """The token from ``token_file``, else $STAGER_DISPATCHER_TOKEN."""
    if token_file is None:
        return check_token(os.environ.get(TOKEN_ENV, ""), f"${TOKEN_ENV}")
    try:
        text = token_file.read_text(errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read token file {token_file}: {exc.strerror}") from exc
    return check_token(text, f"token file {token_file}")


def server_token(token_file: Path | None, default_file: Path) -> tuple[str, Path | None]:
    """The token a dispatcher requires, and the file it came from.

    From ``token_file``, else $STAGER_DISPATCHER_TOKEN, else ``default_file``;
    a missing file is created with a new token, readable by its owner only.
    """
    if token_file is None and os.environ.get(TOKEN_ENV):
        return load_token(None), None
    path = token_file or default_file
    if path.exists():
        return load_token(path), path
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
    except OSError as exc:
        raise from_os_error(exc, f"write token file {path}") from exc
    return token, path
