"""The run's local scratch directory: private to the job's user, and never reached through a link.

    $TMPDIR/finetune-job/<run-id>/        (<output.work_dir>/<run-id>/ when that is set)

The default lies in a directory everyone may write to, under a name anyone can guess: another user
could create it first, or plant a symlink there, and have the job write (and delete) files wherever it
points. So each level the job owns is created with mode 0700, or, if it is already there, accepted only
when it is a real directory (opened with O_NOFOLLOW: a link is refused, never followed) owned by this
user, and its mode is then made 0700. Anything else is refused: exit 6, naming output.work_dir. A
work_dir the user sets may itself be a link (their choice); the run's own folder inside it never is.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from job.errors import StorageError


def private(base: Path, run_id: str, chosen: bool) -> Path:
    """`base/run_id`, made or checked as above; `chosen`: base is the user's output.work_dir."""
    if chosen:
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create ({exc.strerror or exc})", where=f"output.work_dir: {base}") from exc
    else:
        _own_directory(base)
    return _own_directory(base / run_id)


def _own_directory(path: Path) -> Path:
    where = f"output.work_dir: {path}"
    try:
        os.mkdir(path, 0o700)  # never through a link: one already at `path` is "exists"
    except FileExistsError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot create ({exc.strerror or exc})", where=where) from exc
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file
        raise StorageError(
            f"not a directory of this job's own ({exc.strerror}); remove it or set output.work_dir", where=where
        ) from exc
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise StorageError(
                f"owned by uid {info.st_uid}, not by this job's user (uid {os.geteuid()}); remove it or set output.work_dir",
                where=where,
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path
