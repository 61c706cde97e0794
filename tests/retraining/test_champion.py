"""The champion pointer, the gate's rule, the commands and retention, against the real S3 server.

Runs here are made by hand (a `_SUCCESS` manifest and a metrics.json are all the pointer looks at), so
these tests train nothing; tests/e2e/test_champion_run.py does the same end to end with real training.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os

import pytest

from conftest import base_env, run_cli_here
from job import storage
from job.retraining import champion
from job.retraining import promotion
from job.retraining import retention
from job.config import JobConfig, PromotionConfig, RetentionConfig, S3Config
from job.errors import StorageError


@pytest.fixture(params=["s3", "local"])
def store(request, tmp_path, monkeypatch):
    """An output location of either kind: a bucket prefix on the S3 server, or a local directory."""
    if request.param == "local":
        return storage.open_store(str(tmp_path / "runs"), S3Config())
    server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("bucket")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    return storage.open_store(f"s3://{bucket}/runs", S3Config(max_attempts=2))


def finished_run(store, run_id: str, finished_at: str = "2026-01-01T00:00:00+00:00", **metrics) -> None:
    """A run as the pointer sees it: metrics.json, a model file and `_SUCCESS`, last."""
    store.put_bytes(json.dumps(metrics).encode(), f"{run_id}/metrics.json")
    store.put_bytes(b"weights", f"{run_id}/model/model.safetensors")
    store.put_bytes(json.dumps({"run_id": run_id, "finished_at": finished_at, "files": []}).encode(), f"{run_id}/_SUCCESS")


def generations(store) -> list[int]:
    return [record["generation"] for record in champion.history(store)]


def test_conditional_writes_refuse_a_stale_writer(store):
    assert store.put_if(b"first", "p.json", None)
    assert not store.put_if(b"second", "p.json", None)  # If-None-Match: * on an existing object
    data, etag = store.get_with_etag("p.json")
    assert data == b"first"
    assert store.put_if(b"third", "p.json", etag)
    assert not store.put_if(b"fourth", "p.json", etag)  # If-Match with the etag the third write replaced
    assert store.get_bytes("p.json") == b"third"
    assert store.get_with_etag("missing.json") == (None, None)


def _racer(uri: str, env: dict, run_id: str, score: float, barrier, results) -> None:
    """One process: promote `run_id` whenever it beats the champion (the gate's rule, scores known)."""
    os.environ.update(env)
    store = storage.open_store(uri, S3Config(max_attempts=2))
    asked = []

    def choose(pointer):
        asked.append(pointer["generation"] if pointer else 0)
        if len(asked) == 1:
            barrier.wait(timeout=60)  # every writer has read the same (empty) pointer: all but one must lose
        if pointer is not None and pointer["value"] >= score:
            return None
        return {"run_id": run_id, "metric": "test_f1", "value": score, "previous": pointer and pointer["generation"], "reason": "race"}

    written = champion.move(store, choose, by="run")
    results.put((run_id, written["generation"] if written else None, asked))


def test_racing_runs_each_generation_has_one_winner_and_the_best_ends_champion(store, tmp_path):
    uri = store.uri if store.uri.startswith("s3://") else str(tmp_path / "runs")
    scores = {f"run-{i}": score for i, score in enumerate([0.61, 0.83, 0.72, 0.90, 0.55, 0.79])}
    for run_id, score in scores.items():
        finished_run(store, run_id, test_f1=score)
    ctx = multiprocessing.get_context("spawn")  # no boto3 client or lock inherited across fork
    barrier, results = ctx.Barrier(len(scores)), ctx.Queue()
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    processes = [ctx.Process(target=_racer, args=(uri, env, r, s, barrier, results)) for r, s in scores.items()]
    for p in processes:
        p.start()
    try:
        outcomes = [results.get(timeout=120) for _ in processes]
        for p in processes:
            p.join(timeout=30)
            assert p.exitcode == 0
    finally:
        for p in processes:
            p.kill()  # a racer that hangs or fails must not outlive the test

    won = sorted(g for _, g, _ in outcomes if g is not None)
    assert won == list(range(1, len(won) + 1))  # exactly one writer per generation, none skipped
    assert generations(store) == won  # the audit log has every generation, once
    values = [record["value"] for record in champion.history(store)]
    assert values == sorted(values) and len(set(values)) == len(values)  # never moved to a worse run
    pointer = champion.current(store)
    assert pointer["run_id"] == "run-3" and pointer["generation"] == len(won)
    assert sum(1 for _, _, asked in outcomes if len(asked) > 1) == len(scores) - 1  # the losers decided again


def _gate(store, run_id: str, scores: dict, mode: str = "auto", min_delta=0.0, metric: str = "test_f1"):
    """A Gate whose champion scores are known (the real scoring is covered end to end)."""
    cfg = JobConfig(promotion=PromotionConfig(mode=mode, metric=metric, min_delta=min_delta))
    scored = []

    def score(run):
        scored.append(run)
        return scores[run]

    return promotion.Gate(cfg, store, run_id, score), scored


def test_a_worse_run_is_not_promoted_and_says_why(store):
    finished_run(store, "champ", test_f1=0.80)
    champion.promote(store, "champ", "test_f1", "seed")
    finished_run(store, "cand", test_f1=0.95)  # its own (easier) test rows flatter it ...
    gate, _ = _gate(store, "cand", {"champ": 0.84})
    decision = gate.decide({"test_f1": 0.78})  # ... but on the same rows it is worse
    assert not decision.promote
    assert decision.metrics() == {
        "promotion_decision": "keep",
        "promotion_reason": "test_f1 0.7800 against 0.8400 for champion champ on the same rows: -0.0600, less than the 0.0000 required",
        "promotion_metric": "test_f1",
        "promotion_candidate": 0.78,
        "promotion_champion": 0.84,
        "promotion_champion_run": "champ",
        "promotion_champion_generation": 1,
    }
    assert gate.promote(decision, {"test_f1": 0.78}) is None
    assert champion.current(store)["run_id"] == "champ" and generations(store) == [1]


def test_a_run_that_lost_the_race_scores_the_new_champion_and_decides_again(store):
    finished_run(store, "old", test_f1=0.70)
    champion.promote(store, "old", "test_f1", "seed")
    finished_run(store, "cand")
    gate, scored = _gate(store, "cand", {"old": 0.70, "faster": 0.90})
    decision = gate.decide({"test_f1": 0.80})
    assert decision.promote and scored == ["old"]
    finished_run(store, "faster")
    champion.promote(store, "faster", "test_f1", "published first")  # wins while cand is publishing
    assert gate.promote(decision, {"test_f1": 0.80}) is None
    assert scored == ["old", "faster"]
    assert champion.current(store)["run_id"] == "faster" and generations(store) == [1, 2]


def test_the_gate_rule_min_delta_modes_and_loss():
    assert promotion.judge("auto", "test_f1", 0.01, 0.805, 0.80, "c") == (
        False, "test_f1 0.8050 against 0.8000 for champion c on the same rows: +0.0050, less than the 0.0100 required")
    assert promotion.judge("auto", "test_f1", 0.01, 0.81, 0.80, "c")[0]
    assert promotion.judge("auto", "test_f1", "1%", 0.809, 0.80, "c")[0]  # needs 0.008
    assert not promotion.judge("auto", "test_f1", "2%", 0.809, 0.80, "c")[0]  # needs 0.016
    assert promotion.judge("auto", "test_f1", 0.1, 0.9, 0.8, "c")[0]  # 0.9 - 0.8 is 0.0999..., still enough
    assert promotion.judge("auto", "test_f1", 0.0, 0.80, 0.80, "c")[0]  # a tie promotes the fresher model
    assert promotion.judge("auto", "eval_loss", 0.0, 0.30, 0.35, "c")[0]  # lower loss is better
    assert not promotion.judge("auto", "eval_loss", 0.0, 0.40, 0.35, "c")[0]
    assert promotion.judge("never", "test_f1", 0.0, 0.99, 0.1, "c") == (False, "promotion.mode is never")
    assert promotion.judge("always", "test_f1", 0.0, 0.1, 0.99, "c") == (True, "promotion.mode is always")
    assert promotion.judge("auto", "test_f1", 0.0, None, 0.5, "c") == (
        False, "this run has no test_f1 (are the evaluated rows labelled?)")
    assert promotion.judge("auto", "test_f1", 0.0, 0.5, None, None) == (True, "there is no champion yet")


def test_a_run_without_success_is_never_promoted(s3_server, bucket, tmp_path, monkeypatch):
    env = base_env(**s3_server.env())
    uri = f"s3://{bucket}/runs"
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="runs/killed/metrics.json", Body=b'{"test_f1": 0.99}')
    client.put_object(Bucket=bucket, Key="runs/killed/model/model.safetensors", Body=b"w")  # killed before _SUCCESS
    proc = run_cli_here("promote", "killed", "--output", uri, env=env, cwd=tmp_path)
    assert proc.returncode == 6
    assert proc.stderr.strip().splitlines()[-1].endswith(
        f"storage error: {uri}/killed: run killed has no _SUCCESS: not a finished run, so it cannot be champion")
    assert "Traceback" not in proc.stderr
    assert run_cli_here("champion", "--output", uri, "--json", env=env, cwd=tmp_path, check=True).stdout.strip() == "null"

    # The gate never promotes one either: it moves the pointer only after _SUCCESS.
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    store = storage.open_store(uri, S3Config(max_attempts=2))
    gate, _ = _gate(store, "killed", {})
    decision = gate.decide({"test_f1": 0.99})
    with pytest.raises(StorageError, match="run killed has no _SUCCESS"):
        gate.promote(decision, {"test_f1": 0.99})
    assert champion.read(store) == (None, None)


def test_a_champion_whose_run_lost_its_success_is_reported_and_replaced(store):
    finished_run(store, "gone")
    champion.promote(store, "gone", "test_f1", "seed")
    store.delete("gone/_SUCCESS")
    with pytest.raises(StorageError, match="the champion, run gone, has no _SUCCESS"):
        champion.current(store)
    finished_run(store, "cand")
    gate, scored = _gate(store, "cand", {})
    decision = gate.decide({"test_f1": 0.5})
    assert decision.promote and scored == []
    assert decision.reason == "champion gone cannot be scored on this run's rows (gone: its run has no _SUCCESS); replace it"
    assert gate.promote(decision, {"test_f1": 0.5})["generation"] == 2


def test_promote_and_rollback_commands_move_the_pointer_through_the_audit_log(s3_server, bucket, tmp_path, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{bucket}/runs"
    store = storage.open_store(uri, S3Config())
    for run_id, f1 in (("a", 0.7), ("b", 0.8), ("c", 0.9)):
        finished_run(store, run_id, test_f1=f1)
    env = base_env(**s3_server.env())

    def cli(*args, code=0):
        proc = run_cli_here(*args, "--output", uri, env=env, cwd=tmp_path)
        assert proc.returncode == code, proc.stderr
        return proc

    for run_id in ("a", "b", "c"):
        cli("promote", run_id, "--reason", f"ship {run_id}")
    assert "run c is already the champion" in cli("promote", "c").stdout
    shown = cli("champion").stdout
    assert "champion: run c (generation 3)" in shown and "test_f1: 0.9000" in shown and f"model:    {uri}/c/model" in shown

    out = cli("rollback", "--reason", "INC-7").stdout
    assert "champion: run b (generation 4)" in out
    assert "by rollback: rollback of generation 3 (run c) to generation 2: INC-7" in out
    assert "champion: run a (generation 5)" in cli("rollback").stdout  # twice goes back two champions
    last = cli("rollback", code=6).stderr.strip().splitlines()[-1]
    assert last.endswith(f"ERROR   storage error: {uri}/champion.json: generation 5 (run a) has no earlier champion to restore")

    assert generations(store) == [1, 2, 3, 4, 5]
    history = cli("champion", "--history").stdout
    assert [line.split()[2] for line in history.splitlines() if line.startswith("   ")] == ["a", "b", "c", "b", "a"]
    pointer = json.loads(cli("champion", "--json").stdout)
    assert pointer == json.loads(s3_server.client().get_object(Bucket=bucket, Key="runs/promotions/000005.json")["Body"].read())

    # A rollback target whose run was deleted is refused.
    cli("promote", "c")
    store.delete("a/_SUCCESS")
    cli("promote", "b")  # previous: c (generation 6)
    store.delete("c/_SUCCESS")
    assert "run c has no _SUCCESS" in cli("rollback", code=6).stderr
    assert champion.read(store)[0]["run_id"] == "b"


def test_a_missing_audit_record_is_written_by_the_next_writer(store):
    """A writer killed between the pointer and its audit record leaves a gap the next one closes."""
    finished_run(store, "a")
    finished_run(store, "b")
    pointer = {"run_id": "a", "generation": 1, "model": "m", "metric": "test_f1", "value": None,
               "promoted_at": "t", "by": "run", "reason": "r", "previous": None, "nonce": "n1"}
    assert store.put_if(json.dumps(pointer).encode(), champion.POINTER, None)
    champion.promote(store, "b", "test_f1", "next")
    assert generations(store) == [1, 2]
    assert champion.record(store, 1)["nonce"] == "n1"


def test_retention_keeps_the_champion_its_rollback_target_and_runs_still_writing(store):
    for i in range(1, 6):
        finished_run(store, f"r{i}", finished_at=f"2026-01-0{i}T00:00:00+00:00")
    champion.promote(store, "r2", "test_f1", "old champion")
    champion.promote(store, "r1", "test_f1", "champion")  # rollback would restore r2
    store.put_bytes(b"step 100", "writing/checkpoints/checkpoint-100/state")  # a run in progress

    deleted = retention.apply(store, RetentionConfig(keep_runs=2), current_run="r5")
    assert deleted == ["r3"]
    assert retention.runs(store) == ["r1", "r2", "r4", "r5", "writing"]
    assert store.list("r3") == []
    assert store.list("r1") == ["r1/_SUCCESS", "r1/metrics.json", "r1/model/model.safetensors"]
    assert champion.current(store)["run_id"] == "r1"

    # Two days on, nothing written: the unfinished run is abandoned; the champion still stays.
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=49)
    assert retention.apply(store, RetentionConfig(keep_runs=1), current_run="r5", now=later) == ["r4", "writing"]
    assert retention.runs(store) == ["r1", "r2", "r5"]


def test_retention_is_off_by_default(store):
    finished_run(store, "r1")
    assert retention.apply(store, RetentionConfig(), current_run="r2") == []
    assert retention.runs(store) == ["r1"]


def test_promotion_settings_are_checked_when_the_config_loads(tmp_path):
    cases = {
        "promotion.mode=sometimes": "config error: promotion.mode (--set): choose one of auto, never, always, got 'sometimes'",
        "promotion.metric=f1": "config error: promotion.metric (--set): name a test_* or eval_* metric (e.g. test_f1), got 'f1'",
        "promotion.min_delta=ten": "config error: promotion.min_delta (--set): use a number (0.01) or a percentage ('1%'), got 'ten'",
        "promotion.min_delta=-0.1": "config error: promotion.min_delta (--set): must be at least 0, got -0.1",
        "retention.keep_runs=0": "config error: retention.keep_runs (--set): keep at least 1 run (or null to keep all), got 0",
        "run_id=promotions": "config error: run_id (--set): 'promotions' is where the champion is kept; choose another run id",
    }
    for setting, message in cases.items():
        proc = run_cli_here("config", "--set", setting, cwd=tmp_path)
        assert proc.returncode == 3, (setting, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1].endswith(message)
    proc = run_cli_here("config", "--set", "promotion.min_delta=2.5%", "--set", "retention.keep_runs=7", cwd=tmp_path, check=True)
    lines = {line.split()[0]: line.split(None, 1)[1] for line in proc.stdout.splitlines()}
    assert lines["promotion.min_delta"] == '"2.5%"  # --set' and lines["retention.keep_runs"] == "7  # --set"
