"""The champion pointer: which finished run the model's consumers use, moved only by compare-and-swap.

    <output.uri>/champion.json             the current champion (run id, model, metric, generation, nonce)
    <output.uri>/promotions/000007.json    every promotion, written once: an audit log with no gaps

Protocol (the same for a run that beat the champion, `finetune-job promote` and `finetune-job rollback`):

1. Read `champion.json` and its ETag (generation N, or no champion).
2. Make sure `promotions/N.json` exists (a writer killed between steps 4 and 5 left it missing; it is
   exactly the pointer's bytes, so anyone can write it).
3. Decide from what was read (the gate scores the champion; promote/rollback pick a run) and check the
   chosen run's `_SUCCESS`: the pointer never names an unfinished run.
4. Write generation N+1 with `If-Match: <etag>` (`If-None-Match: *` for the first champion). S3 lets
   exactly one writer win; a local directory does the same under an fcntl lock (job/storage/).
5. The winner writes `promotions/N+1.json` with `If-None-Match: *`.

A writer that loses step 4 goes back to step 1 and decides again against the new champion. A write
that landed but whose reply was lost (then retried and refused, or failing until the retries ran out)
is recognised by its nonce: it succeeded. Readers follow the pointer and check the run's `_SUCCESS`
(`current`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import secrets
import time
from typing import Callable

from job import storage
from job.config.schema import CHAMPION_POINTER, PROMOTIONS_FOLDER
from job.errors import StorageError

log = logging.getLogger(__name__)

POINTER, PROMOTIONS = CHAMPION_POINTER, PROMOTIONS_FOLDER  # in the output root, beside the runs
ATTEMPTS = 20  # compare-and-swap rounds before giving up (each lost round means another writer won)


def read(store) -> tuple[dict | None, str | None]:
    """The pointer as stored and its ETag; (None, None) before the first champion."""
    data, etag = store.get_with_etag(POINTER)
    return (json.loads(data), etag) if data is not None else (None, None)


def current(store) -> dict | None:
    """The champion for readers: the pointer, followed to a run whose `_SUCCESS` is there."""
    pointer, _ = read(store)
    if pointer is not None and storage.read_manifest(store, pointer["run_id"]) is None:
        raise StorageError(
            f"the champion, run {pointer['run_id']}, has no _SUCCESS (deleted?); promote a finished run",
            where=store.url(POINTER),
        )
    return pointer


def history(store) -> list[dict]:
    """Every promotion, oldest first."""
    records = []
    for key in store.list(PROMOTIONS):
        data = store.get_bytes(key)
        if data is not None and key.endswith(".json"):
            records.append(json.loads(data))
    return sorted(records, key=lambda r: r["generation"])


def record(store, generation: int) -> dict | None:
    data = store.get_bytes(_audit_key(generation))
    return json.loads(data) if data is not None else None


def move(store, choose: Callable[[dict | None], dict | None], by: str) -> dict | None:
    """Move the pointer by compare-and-swap; return the record written, or None if `choose` declined.

    `choose(current_pointer)` returns the new champion's fields (`run_id`, `metric`, `value`,
    `previous`, `reason`), or None to leave the pointer as it is. It is asked again, with the new
    pointer, every time another writer wins the race."""
    for attempt in range(ATTEMPTS):
        pointer, etag = read(store)
        if pointer is not None:
            write_audit(store, pointer)
        fields = choose(pointer)
        if fields is None:
            return None
        require_finished(store, fields["run_id"])
        new = {
            "run_id": fields["run_id"],
            "generation": (pointer["generation"] if pointer else 0) + 1,
            "model": model_location(store, fields["run_id"]),
            "metric": fields["metric"],
            "value": fields["value"],
            "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "by": by,
            "reason": fields["reason"],
            "previous": fields["previous"],  # the generation `rollback` restores
            "nonce": secrets.token_hex(16),  # tells this write from any other, e.g. after a retried request
        }
        won = _put_pointer(store, new, etag)
        now = new if won else read(store)[0]
        if now is not None and now["nonce"] == new["nonce"]:  # also a write whose reply was lost, then refused on retry
            write_audit(store, new)
            log.info(
                "champion: generation %d is run %s (%s %s) by %s: %s",
                new["generation"], new["run_id"], new["metric"], shown(new["value"]), by, new["reason"],
            )
            return new
        log.info("champion: lost the race for generation %d to run %s; deciding again", new["generation"], now and now["run_id"])
        time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))  # spread out the writers still racing
    raise StorageError(f"the pointer kept changing: gave up after {ATTEMPTS} attempts", where=store.url(POINTER))


def _put_pointer(store, new: dict, etag: str | None) -> bool:
    """The conditional write of the pointer. When it fails with a storage error (the retries ran out,
    perhaps after a write that landed), the pointer is read: if it holds this write's nonce, the write
    happened and only its reply was lost; if another writer's, the round is lost."""
    try:
        return store.put_if(_encode(new), POINTER, etag)
    except StorageError as failure:
        try:
            now, now_etag = read(store)
        except StorageError:
            raise failure from None
        if now is not None and now.get("nonce") == new["nonce"]:
            log.info("champion: the reply to the pointer write was lost, but the pointer holds this write's nonce: it landed")
            return True
        if now_etag != etag:  # another writer's pointer: this round is lost, decide again
            return False
        raise failure


def promote(store, run_id: str, metric: str, reason: str) -> dict | None:
    """`finetune-job promote RUN_ID`: make a finished run the champion by hand (None: it already is)."""
    require_finished(store, run_id)
    value = run_metric(store, run_id, metric)

    def choose(pointer):
        if pointer is not None and pointer["run_id"] == run_id:
            return None
        previous = pointer["generation"] if pointer else None
        return {"run_id": run_id, "metric": metric, "value": value, "previous": previous, "reason": reason}

    return move(store, choose, by="promote")


def rollback(store, reason: str | None = None) -> dict:
    """`finetune-job rollback`: restore the champion the current one replaced.

    Each record names the generation a rollback restores (`previous`); a rollback's own record points
    one further back, so rolling back twice goes back two champions, not back and forth."""

    def choose(pointer):
        if pointer is None:
            raise StorageError("there is no champion to roll back", where=store.url(POINTER))
        if pointer.get("previous") is None:
            raise StorageError(
                f"generation {pointer['generation']} (run {pointer['run_id']}) has no earlier champion to restore",
                where=store.url(POINTER),
            )
        target = record(store, pointer["previous"])
        if target is None:
            raise StorageError("the audit record to restore is missing", where=store.url(_audit_key(pointer["previous"])))
        because = f"rollback of generation {pointer['generation']} (run {pointer['run_id']}) to generation {target['generation']}"
        return {
            "run_id": target["run_id"],
            "metric": target["metric"],
            "value": target["value"],
            "previous": target.get("previous"),
            "reason": f"{because}: {reason}" if reason else because,
        }

    return move(store, choose, by="rollback")


def run_metric(store, run_id: str, metric: str) -> float | None:
    """A run's own value of `metric` (from its metrics.json), for the record."""
    data = store.get_bytes(storage.join(run_id, "metrics.json"))
    value = json.loads(data).get(metric) if data is not None else None
    return value if isinstance(value, (int, float)) else None


def require_finished(store, run_id: str) -> dict:
    """The run's manifest; a run without `_SUCCESS` is never a champion."""
    manifest = storage.read_manifest(store, run_id)
    if manifest is None:
        raise StorageError(f"run {run_id} has no _SUCCESS: not a finished run, so it cannot be champion", where=store.url(run_id))
    return manifest


def model_location(store, run_id: str) -> str:
    location = store.url(storage.join(run_id, "model"))
    return location if location.startswith("s3://") else os.path.abspath(location)


def write_audit(store, pointer: dict) -> None:
    """Write the pointer's bytes as its generation's audit record, once; it must match if present."""
    key = _audit_key(pointer["generation"])
    existing = store.get_bytes(key)
    if existing is None and store.put_if(_encode(pointer), key, None):
        return
    existing = existing or store.get_bytes(key)
    if json.loads(existing).get("nonce") != pointer["nonce"]:
        raise StorageError(
            f"generation {pointer['generation']} was recorded by another promotion: this store's conditional writes are not atomic",
            where=store.url(key),
        )


def _audit_key(generation: int) -> str:
    return f"{PROMOTIONS}/{generation:06d}.json"


def _encode(pointer: dict) -> bytes:
    return (json.dumps(pointer, indent=2) + "\n").encode()


def shown(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def pointer_line(pointer: dict) -> str:
    """The champion for a person, a few lines."""
    return "\n".join(
        [
            f"champion: run {pointer['run_id']} (generation {pointer['generation']})",
            f"  model:    {pointer['model']}",
            f"  {pointer['metric']}: {shown(pointer['value'])}",
            f"  promoted: {pointer['promoted_at']} by {pointer['by']}: {pointer['reason']}",
        ]
    )
