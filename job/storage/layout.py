"""A published run's layout: every file uploaded first, `_SUCCESS` (the manifest: each file's size
and sha256) last, so anything without `_SUCCESS` is not a finished run; and the probe that proves an
output location writable before any training."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from pathlib import Path

from job.errors import StorageError
from job.storage.stores import join

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"


PROBE = ".finetune-job-probe"


# Characters that str.splitlines() and many JSON Lines readers take for line breaks.
_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_line(row: dict) -> str:
    """One JSON Lines record: UTF-8 kept readable, but the Unicode line breaks escaped (rt-polarity
    has U+0085 in its text), so that every reader sees exactly one record per line."""
    text = json.dumps(row, ensure_ascii=False)
    for char, escaped in _LINE_BREAKS.items():
        text = text.replace(char, escaped)
    return text + "\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def publish(local_dir: Path, store, run_id: str, extra: dict | None = None) -> dict:
    """Upload a staged run directory, then write `_SUCCESS` (the manifest) last."""
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != SUCCESS)
    manifest_files = []
    for path in files:
        rel = path.relative_to(local_dir).as_posix()
        store.put_file(path, join(run_id, rel))
        manifest_files.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
    manifest = {
        "run_id": run_id,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
        "files": manifest_files,
    }
    store.put_bytes(json.dumps(manifest, indent=2).encode(), join(run_id, SUCCESS))
    log.info("published %d files to %s", len(files), store.url(run_id))
    return manifest


def replace_file(store, run_id: str, path: str, data: bytes) -> None:
    """Rewrite one file of a finished run, and its entry in the `_SUCCESS` manifest. The manifest goes
    first: if the job stops in between, the old file no longer verifies (and a rerun, finding it
    unchanged, writes both again) instead of a new file that would not."""
    manifest = read_manifest(store, run_id)
    for entry in manifest["files"]:
        if entry["path"] == path:
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest["amended_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    store.put_bytes(json.dumps(manifest, indent=2).encode(), join(run_id, SUCCESS))
    store.put_bytes(data, join(run_id, path))


def delete_tree(store, prefix: str) -> None:
    """Delete every object under `prefix` (a run, a checkpoint)."""
    for key in store.list(prefix):
        store.delete(key)


def read_manifest(store, run_id: str) -> dict | None:
    """The run's `_SUCCESS` manifest, or None when the run is not finished."""
    data = store.get_bytes(join(run_id, SUCCESS))
    return json.loads(data) if data is not None else None


def probe(store) -> None:
    """Prove the output location is writable: write a probe object and delete it."""
    key = f"{PROBE}-{os.getpid()}"
    store.put_bytes(b"probe", key)
    if store.get_bytes(key) != b"probe":
        raise StorageError("wrote a probe object but could not read it back", where=store.url(key))
    store.delete(key)
