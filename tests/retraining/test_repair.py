"""What a rerun of a finished run id does with a promotion that a failure after `_SUCCESS` left
undone (job/retraining/promotion.py: settle), on hand-made runs in both kinds of store. The same end to end, with
real training and a real failure, is in tests/e2e/test_faults_runs.py."""

from __future__ import annotations

import hashlib
import json

from job import storage
from job.retraining import champion
from job.retraining import promotion
from test_champion import store  # noqa: F401 - the same fixture: a bucket prefix, or a local directory


def published(store, run_id: str, **decision) -> dict:
    """A finished run as `run` publishes it: metrics.json with a promotion decision, `_SUCCESS` last."""
    metrics = {"test_f1": decision.get("candidate", 0.5), **promotion.Decision(**{
        "promote": True, "reason": "test_f1 better", "metric": "test_f1", "candidate": 0.5, **decision}).metrics()}
    data = json.dumps(metrics, indent=2).encode()
    store.put_bytes(data, f"{run_id}/metrics.json")
    manifest = {"run_id": run_id, "finished_at": "2026-01-01T00:00:00+00:00",
                "files": [{"path": "metrics.json", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]}
    store.put_bytes(json.dumps(manifest).encode(), f"{run_id}/_SUCCESS")
    return metrics


def verified_metrics(store, run_id: str) -> dict:
    data = store.get_bytes(f"{run_id}/metrics.json")
    entry = storage.read_manifest(store, run_id)["files"][0]
    assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])
    return json.loads(data)


def generations(store) -> list[tuple[int, str, str]]:
    return [(r["generation"], r["run_id"], r["by"]) for r in champion.history(store)]


def test_a_lost_promotion_against_the_same_champion_is_written_by_the_rerun(store):
    published(store, "old", promote=True, reason="there is no champion yet")
    champion.promote(store, "old", "test_f1", "seed")
    published(store, "new", champion=0.4, champion_run="old", champion_generation=1)  # its pointer write failed
    before = store.get_bytes("new/metrics.json")

    metrics = promotion.settle(store, "new")
    assert metrics["promotion_decision"] == "promote"
    assert store.get_bytes("new/metrics.json") == before  # what it said happened: nothing to amend
    pointer = champion.current(store)
    assert (pointer["run_id"], pointer["generation"], pointer["previous"]) == ("new", 2, 1)
    assert pointer["reason"] == "test_f1 better (written by a rerun)"
    assert generations(store) == [(1, "old", "promote"), (2, "new", "run")]
    promotion.settle(store, "new")  # again: nothing more
    assert generations(store) == [(1, "old", "promote"), (2, "new", "run")]


def test_a_decision_overtaken_by_another_champion_is_superseded_and_metrics_json_says_so(store):
    published(store, "old")
    champion.promote(store, "old", "test_f1", "seed")
    published(store, "new", champion=0.4, champion_run="old", champion_generation=1)  # its pointer write failed
    published(store, "newer")
    champion.promote(store, "newer", "test_f1", "an operator, meanwhile")

    metrics = promotion.settle(store, "new")
    assert champion.current(store)["run_id"] == "newer" and generations(store) == [(1, "old", "promote"), (2, "newer", "promote")]
    assert metrics["promotion_decision"] == "keep"
    assert metrics["promotion_reason"] == (
        "superseded: promoted against champion old, but run newer became champion (generation 2) before this run's "
        "promotion was written, and this run was not compared with it (finetune-job promote overrides)")
    assert verified_metrics(store, "new") == metrics  # the manifest was rewritten with it
    assert {k: metrics[k] for k in ("promotion_candidate", "promotion_champion_run")} == {"promotion_candidate": 0.5, "promotion_champion_run": "old"}
    assert promotion.settle(store, "new") == metrics  # a keep is final


def test_a_promotion_that_happened_is_left_alone_even_after_newer_champions(store):
    published(store, "a", promote=True)
    champion.move(store, lambda p: {"run_id": "a", "metric": "test_f1", "value": 0.5, "previous": None, "reason": "won"}, by="run")
    published(store, "b")
    champion.promote(store, "b", "test_f1", "later")
    before = store.get_bytes("a/metrics.json")
    assert promotion.settle(store, "a")["promotion_decision"] == "promote"
    assert store.get_bytes("a/metrics.json") == before and generations(store) == [(1, "a", "run"), (2, "b", "promote")]


def test_a_pointer_that_landed_without_its_audit_record_gets_it(store):
    """Killed between the pointer and its record: the rerun finds the pointer naming it, writes the record."""
    published(store, "a")
    pointer = {"run_id": "a", "generation": 1, "model": "m", "metric": "test_f1", "value": 0.5,
               "promoted_at": "t", "by": "run", "reason": "r", "previous": None, "nonce": "n1"}
    assert store.put_if(json.dumps(pointer).encode(), champion.POINTER, None)
    assert champion.history(store) == []
    promotion.settle(store, "a")
    assert champion.history(store) == [pointer]


def test_a_keep_decision_needs_nothing(store):
    published(store, "a", promote=False, reason="worse")
    promotion.settle(store, "a")
    assert champion.read(store) == (None, None)
