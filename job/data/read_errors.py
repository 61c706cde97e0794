"""Failures of datasets' loaders turned into one-line errors: a missing or unreadable file is a data
error (exit 4), a bucket that fails while it is read is a storage error (exit 6, retried)."""

from __future__ import annotations

import contextlib
import logging
import re
import sys

from job import storage
from job.config import DataConfig, env
from job.data.rows import source_name
from job.errors import ConfigError, DataError, JobError, StorageError, first_line

log = logging.getLogger(__name__)

_EMPTY_SPLIT = re.compile(r'Instruction "(\w+)" corresponds to no data')


class _Held(logging.Handler):
    """Holds datasets' own error lines while it loads: they name the file at fault, so our one
    error line can name it too, and they are not printed next to ours."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def file_at_fault(self) -> str | None:
        for message in reversed(self.messages):
            found = re.search(r"file '([^']+)'", message)
            if found:
                return found.group(1)
        return None


def read(load, data: DataConfig):
    """Run a datasets call, turning its failures into one-line data or storage errors."""
    from datasets.exceptions import DatasetNotFoundError

    datasets_log, held = logging.getLogger("datasets"), _Held()
    datasets_log.addHandler(held)
    propagate, datasets_log.propagate = datasets_log.propagate, False
    where = source_name(data)
    try:
        with storage_faults(data, held.file_at_fault):
            return load()
    except (DataError, ConfigError, StorageError):
        raise
    except DatasetNotFoundError as exc:
        raise DataError(f"dataset not found ({first_line(exc)})", where=where) from exc
    except PermissionError as exc:
        raise StorageError(f"access denied ({first_line(exc)})", where=where) from exc
    except ConnectionError as exc:
        offline = " (HF_HUB_OFFLINE is set)" if _offline() else ""
        raise DataError(f"cannot reach the dataset{offline}: {first_line(exc)}", where=where) from exc
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise DataError(f"not found ({first_line(exc)})", where=where) from exc
    except Exception as exc:  # pyarrow/json/csv parse errors arrive wrapped in several layers
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, PermissionError):
            raise StorageError(f"access denied ({first_line(cause)})", where=where) from exc
        empty = _EMPTY_SPLIT.search(str(cause))
        if empty:  # datasets' words for a split whose files hold no rows
            split = empty.group(1)
            raise DataError(f"the {split} split is empty", where=source_name(data, split)) from exc
        where = held.file_at_fault() or where
        raise DataError(f"cannot read ({type(cause).__name__}: {first_line(cause)})", where=where) from exc
    finally:
        datasets_log.removeHandler(held)
        datasets_log.propagate = propagate
        for message in held.messages if sys.exc_info()[0] is None else []:
            log.error("datasets: %s", message)


@contextlib.contextmanager
def storage_faults(data: DataConfig, file_at_fault=lambda: None):
    """A bucket that fails while its files are read (here, or a stream read while training) is a
    storage error: exit 6, which Kubernetes retries, not exit 4 for bad data."""
    try:
        yield
    except Exception as exc:
        fault = storage.fault_behind(exc) if data.dataset is None and not isinstance(exc, JobError) else None
        if fault is None:
            raise
        where = file_at_fault() or source_name(data)
        raise StorageError(f"cannot read ({type(fault).__name__}: {first_line(fault)})", where=where) from exc


def _offline() -> bool:
    return env.hub_offline()
