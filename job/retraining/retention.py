"""Retention: with `retention.keep_runs: N`, each run ends by deleting older runs, never the wrong one.

Always kept:
- the N newest finished runs (newest by the `finished_at` in their `_SUCCESS`), and the run that just
  finished;
- the champion, and the run `finetune-job rollback` would restore;
- an unfinished run (no `_SUCCESS`) that may still be writing. A live run uploads checkpoints as it
  trains and its files at the end, so an unfinished run is taken for abandoned (a killed pod nobody
  resumed) only when nothing under it was written for `retention.abandoned_after_hours` (default 48);
  keep that above the longest quiet stretch of a live run (checkpoint.every_minutes, upload time).

A finished run loses its `_SUCCESS` first, so a run deleted halfway is never taken for a finished one.
The pointer is read again after that: a run that became champion meanwhile gets its `_SUCCESS` back.
"""

from __future__ import annotations

import datetime as dt
import logging

from job import storage
from job.config.schema import RESERVED
from job.retraining import champion

log = logging.getLogger(__name__)


def apply(store, settings, current_run: str, now: dt.datetime | None = None) -> list[str]:
    """Delete what retention allows; return the run ids deleted."""
    if settings.keep_runs is None:
        return []
    now = now or dt.datetime.now(dt.timezone.utc)
    finished, unfinished = {}, []
    for run in runs(store):
        manifest = storage.read_manifest(store, run)
        if manifest is None:
            unfinished.append(run)
        else:
            finished[run] = manifest.get("finished_at", "")
    newest_first = sorted(finished, key=lambda run: (finished[run], run), reverse=True)
    keep = set(newest_first[: settings.keep_runs]) | protected(store) | {current_run}
    deleted = [run for run in newest_first[settings.keep_runs :] if run not in keep and _delete_finished(store, run)]
    for run in unfinished:
        last_write = store.modified(run)
        if run in keep or last_write is None or now - last_write < dt.timedelta(hours=settings.abandoned_after_hours):
            continue
        log.info("retention: run %s has no _SUCCESS and nothing written since %s: abandoned", run, last_write.isoformat(timespec="seconds"))
        storage.delete_tree(store, run)
        deleted.append(run)
    if deleted:
        log.info("retention: deleted %d run(s) beyond the %d newest: %s", len(deleted), settings.keep_runs, ", ".join(deleted))
    return deleted


def runs(store) -> list[str]:
    """Run ids in the output root: its folders, less the champion's own files and hidden ones."""
    names = {key.split("/", 1)[0] for key in store.list("") if "/" in key}
    return sorted(name for name in names if name not in RESERVED and not name.startswith("."))


def protected(store) -> set[str]:
    """The champion's run and the one a rollback would restore."""
    pointer, _ = champion.read(store)
    if pointer is None:
        return set()
    restore = champion.record(store, pointer["previous"]) if pointer.get("previous") is not None else None
    return {pointer["run_id"]} | ({restore["run_id"]} if restore else set())


def _delete_finished(store, run: str) -> bool:
    success = storage.join(run, storage.SUCCESS)
    manifest = store.get_bytes(success)
    store.delete(success)
    if run in protected(store):  # promoted by hand while retention was looking
        store.put_bytes(manifest, success)
        log.info("retention: run %s became champion meanwhile; kept", run)
        return False
    storage.delete_tree(store, run)
    return True
