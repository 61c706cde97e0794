"""The job's user errors and their exit codes.

Kubernetes decides from the exit code alone whether a failed pod is worth retrying (see the Job's
`podFailurePolicy` in k8s/base/job.yaml), so each kind of mistake has its own code and this table is
the contract. It is documented once more in docs/failures-and-security.md.

| code | meaning                                                   | retry?               |
|------|-----------------------------------------------------------|----------------------|
| 0    | run finished (`_SUCCESS` written)                         | -                    |
| 1    | internal error (a bug: please report it)                  | yes (may be transient)|
| 2    | command-line usage error                                  | no                   |
| 3    | configuration error                                       | no                   |
| 4    | data error (missing file/column/label, empty split)       | no                   |
| 5    | model error (model not found or not loadable)             | no                   |
| 6    | storage error (unreachable, forbidden, failed upload)     | yes                  |
| 10   | interrupted (SIGTERM/SIGINT): checkpoint saved, rerun resumes | yes              |
"""

from __future__ import annotations

import click

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_DATA = 4
EXIT_MODEL = 5
EXIT_STORAGE = 6
EXIT_INTERRUPTED = 10
# Between a worker and its agent only, never the job's exit code: this worker stopped because another
# one failed (its connection closed); the agent reports the one that failed first (job/training/launch.py).
EXIT_PEER_LOST = 11


class JobError(click.ClickException):
    """A mistake the user can fix: printed as one line, never as a traceback (unless --debug)."""

    exit_code = EXIT_INTERNAL
    kind = "error"

    def __init__(self, message: str, *, where: str | None = None):
        # `where` names the config key or file to fix; it leads the line so it is the first thing read.
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where

    def format_message(self) -> str:
        return f"{self.kind}: {self.message}"


class ConfigError(JobError):
    exit_code = EXIT_CONFIG
    kind = "config error"


class DataError(JobError):
    exit_code = EXIT_DATA
    kind = "data error"


class ModelError(JobError):
    exit_code = EXIT_MODEL
    kind = "model error"


class StorageError(JobError):
    exit_code = EXIT_STORAGE
    kind = "storage error"


class Interrupted(JobError):
    """Raised after a SIGTERM/SIGINT once the last checkpoint is safe; the rerun resumes from it."""

    exit_code = EXIT_INTERRUPTED
    kind = "interrupted"


def first_line(exc: BaseException, limit: int = 300) -> str:
    """What an error line quotes of an exception: its message's first line, cut at `limit`, or the
    exception's class name when the message is empty (`str(exc).splitlines()[0]` raised IndexError
    there, exit 1 instead of the error's own code)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
