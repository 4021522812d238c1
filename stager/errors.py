"""The one error hierarchy of stager.

Every failure a user can cause or meet is one of these; third-party
exceptions (botocore, OSError) are translated at the boundary with
``raise ... from exc`` so the cause stays attached for ``--debug``.

::

    StagerError                    exit 1   anything else we understood
    ├── ConfigError                exit 2   bad settings, flags or config file
    │   ├── InvalidUrlError        exit 2   a URL that is not well formed
    │   ├── UnsafePathError        exit 2   a path that escapes its root (``..``, absolute, NUL)
    │   ├── DigestFormatError      exit 2   text that is not a digest (xxh3-128:<32 hex>)
    │   ├── ProtocolError          exit 2   a malformed message, or another protocol version
    │   └── CacheFormatError       exit 2   a cache directory of another format or version
    ├── NotFoundError              exit 3   missing bucket or key
    ├── AccessDeniedError          exit 4   wrong credentials or no permission
    ├── UnreachableError           exit 5   endpoint down, DNS, connection refused, timeouts
    ├── ThrottledError             exit 6   the store kept asking us to slow down
    ├── PreconditionFailedError    exit 15  a create-only write found the key taken
    │   └── StaleAttemptError      exit 15  a task's attempt is no longer its current lease
    ├── LockTimeoutError           exit 16  a lock stayed held by another process
    ├── IntegrityError             exit 7   digest or size mismatch
    ├── LocalIOError               exit 8   a local file could not be read or written
    │   └── DiskFullError          exit 9   no space left on the destination
    │       └── CacheFullError     exit 9   the cache quota cannot make room
    └── TaskError                           a wrapped task did not succeed
        ├── CommandFailedError     exit 10  the command exited non-zero or died of a signal
        ├── MissingOutputError     exit 11  a declared output was not produced
        ├── TaskTimeoutError       exit 12  the command ran past its timeout and was killed
        ├── StageOutError          exit 13  an output could not be made durable (retry later)
        └── TaskCancelledError     exit 14  the task was stopped before it ended (a drain)

Each error carries ``hint``: one sentence telling the user what to do next.
Messages never contain secrets (credentials are never formatted into them).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stager.locations import S3Url


class StagerError(Exception):
    """Root of every error stager raises on purpose."""

    exit_code = 1
    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def one_line(self) -> str:
        """The message and the hint on one line, as the CLI prints them."""
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(StagerError):
    exit_code = 2
    default_hint = "check the flag, STAGER_* variable or config file named above"


class InvalidUrlError(ConfigError):
    default_hint = "write S3 locations as s3://bucket/key"


class UnsafePathError(ConfigError):
    default_hint = "use a relative path without '..' components"


class DigestFormatError(ConfigError):
    default_hint = "a digest is written xxh3-128: followed by 32 hex digits"


class ProtocolError(ConfigError):
    default_hint = "the client and the dispatcher must be the same stager version"


class CacheFormatError(ConfigError):
    default_hint = "point --cache-dir at an empty directory or a stager cache"


class NotFoundError(StagerError):
    exit_code = 3
    default_hint = "check the bucket and key names"


class AccessDeniedError(StagerError):
    exit_code = 4
    default_hint = (
        "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile, "
        "and that they may use this bucket"
    )


class UnreachableError(StagerError):
    exit_code = 5
    default_hint = "check --endpoint-url / AWS_ENDPOINT_URL and that the server is running"


class ThrottledError(StagerError):
    exit_code = 6
    default_hint = "the store is overloaded; retry later or lower --max-concurrency"


class PreconditionFailedError(StagerError):
    exit_code = 15
    default_hint = "the object already exists and must not be replaced"


class StaleAttemptError(PreconditionFailedError):
    default_hint = "the task was leased again after this attempt's lease ended; drop the result"


class LockTimeoutError(StagerError):
    exit_code = 16
    default_hint = "another process holds it; wait, or run 'stager cache gc' if it died"


class IntegrityError(StagerError):
    exit_code = 7
    default_hint = (
        "the stored object is damaged or was changed by another tool; "
        "repair it with `stager push --verify-remote`"
    )


class LocalIOError(StagerError):
    exit_code = 8
    default_hint = "check that the path exists and that you may read or write it"


class DiskFullError(LocalIOError):
    exit_code = 9
    default_hint = "free space on the destination file system or choose another destination"


def from_os_error(exc: OSError, action: str) -> LocalIOError:
    """Translate an ``OSError`` met while doing ``action`` (e.g. "write /x/y").

    ENOSPC and EDQUOT become :class:`DiskFullError`; the rest :class:`LocalIOError`.
    """
    reason = exc.strerror or exc.__class__.__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"cannot {action}: {reason}")
    return LocalIOError(f"cannot {action}: {reason}")


class CacheFullError(DiskFullError):
    default_hint = "raise --cache-quota, or unpin or evict entries (stager cache evict)"


class TaskError(StagerError):
    """A wrapped task did not succeed; its outputs were not published.

    ``logs`` names where its command's stdout and stderr went, if they were kept.
    """

    exit_code = 10
    logs: tuple[S3Url, ...] = ()


class CommandFailedError(TaskError):
    exit_code = 10
    default_hint = "see the task's stderr log"


class MissingOutputError(TaskError):
    exit_code = 11
    default_hint = "check that the command writes the output at the path the spec declares"


class TaskTimeoutError(TaskError):
    exit_code = 12
    default_hint = "raise the task's timeout_s or make the command faster"


class StageOutError(TaskError):
    exit_code = 13
    default_hint = "the outputs are not durable and no result was recorded; run the task again"


class TaskCancelledError(TaskError):
    exit_code = 14
    default_hint = "the task was handed back and will run again elsewhere"
