"""Scheduled retraining end to end against the real S3 server: real runs, real scoring of the champion.

The data is read through a date window, as a nightly CronJob would; the gate is on test_accuracy
(the demo's test rows are the same in every run, so the numbers can be compared across runs).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import base_env, run_cli_here, s3_keys, tiny_config, write_yaml

GOOD = {"num_train_epochs": 6}  # learns the demo data (test accuracy well above 0.8)
WORSE = {"max_steps": 1, "learning_rate": 1.0e-6}  # barely moves from its random start
DATE = "2026-01-07"


def _config(tmp_path, bucket: str, prefix: str, name: str, training: dict, **sections) -> str:
    cfg = tiny_config(f"s3://{bucket}/{prefix}", promotion={"metric": "test_accuracy"}, **sections)
    cfg["data"] = {
        "train_files": f"s3://{bucket}/events/dt={{date-1d..date}}/train.jsonl",
        "validation_files": f"s3://{bucket}/events/validation.jsonl",
        "test_files": f"s3://{bucket}/events/test.jsonl",
        "max_length": 32,
    }
    cfg["training"].update(training)
    return str(write_yaml(tmp_path / f"{name}.yaml", cfg))


def _json(client, bucket: str, key: str) -> dict:
    return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())



@pytest.fixture(scope="module")
def nightly(s3_server, tmp_path_factory):
    """Two nights: a good first run becomes champion; a worse one the next night does not."""
    import job

    client, bucket = s3_server.client(), "nightly"
    client.create_bucket(Bucket=bucket)
    demo = job.__path__[0] + "/demo"
    for day in ("2026-01-06", DATE):
        client.upload_file(f"{demo}/reviews.train.jsonl", bucket, f"events/dt={day}/train.jsonl")
    for split in ("validation", "test"):
        client.upload_file(f"{demo}/reviews.{split}.jsonl", bucket, f"events/{split}.jsonl")
    # An old finished run that retention may delete.
    client.put_object(Bucket=bucket, Key="runs/old/metrics.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key="runs/old/_SUCCESS", Body=b'{"run_id": "old", "finished_at": "2025-01-01T00:00:00+00:00", "files": []}')

    tmp = tmp_path_factory.mktemp("nightly")
    env = base_env(**s3_server.env(), FINETUNE_SCHEDULE__DATE=DATE)
    good = run_cli_here("run", "--config", _config(tmp, bucket, "runs", "good", GOOD), env={**env, "FINETUNE_RUN_ID": "good"}, cwd=tmp, check=True)
    champion_after_good = _json(client, bucket, "runs/champion.json")
    worse_cfg = _config(tmp, bucket, "runs", "worse", WORSE, retention={"keep_runs": 1})
    worse = run_cli_here("run", "--config", worse_cfg, env={**env, "FINETUNE_RUN_ID": "worse"}, cwd=tmp, check=True)
    return {"client": client, "bucket": bucket, "good": good, "worse": worse, "champion_after_good": champion_after_good, "tmp": tmp, "env": env}


def test_the_first_run_becomes_champion_with_its_report(nightly):
    client, bucket = nightly["client"], nightly["bucket"]
    pointer = nightly["champion_after_good"]
    assert pointer["run_id"] == "good" and pointer["generation"] == 1 and pointer["by"] == "run"
    assert pointer["model"] == f"s3://{bucket}/runs/good/model" and pointer["previous"] is None
    metrics = _json(client, bucket, "runs/good/metrics.json")
    assert metrics["promotion_decision"] == "promote" and metrics["promotion_reason"] == "there is no champion yet"
    assert pointer["metric"] == "test_accuracy" and pointer["value"] == metrics["test_accuracy"] > 0.8
    manifest = _json(client, bucket, "runs/good/_SUCCESS")
    listed = {f["path"] for f in manifest["files"]}
    plots = {"data", "token_lengths", "loss", "confusion_matrix", "per_class", "promotion"}
    assert {"report.html"} | {f"plots/{name}.png" for name in plots} <= listed
    assert "train=960" in nightly["good"].stderr  # two days of the window
    assert "champion: generation 1 is run good (test_accuracy" in nightly["good"].stderr


def test_a_worse_run_is_scored_against_the_champion_on_the_same_rows_and_not_promoted(nightly):
    client, bucket = nightly["client"], nightly["bucket"]
    good = _json(client, bucket, "runs/good/metrics.json")
    worse = _json(client, bucket, "runs/worse/metrics.json")
    assert worse["promotion_decision"] == "keep"
    assert worse["promotion_champion_run"] == "good" and worse["promotion_champion_generation"] == 1
    # The champion's model, loaded and evaluated inside the worse run, scores what it scored itself.
    assert worse["promotion_champion"] == pytest.approx(good["test_accuracy"], abs=1e-9)
    assert worse["promotion_candidate"] == worse["test_accuracy"] < good["test_accuracy"]
    assert "less than the 0.0000 required" in worse["promotion_reason"]
    assert "promotion: keep the champion: test_accuracy" in nightly["worse"].stderr
    assert _json(client, bucket, "runs/champion.json") == nightly["champion_after_good"]
    assert s3_keys(client, bucket, "runs/promotions/") == ["runs/promotions/000001.json"]
    report = client.get_object(Bucket=bucket, Key="runs/worse/report.html")["Body"].read().decode()
    assert "<b>Champion kept.</b>" in report


def test_retention_after_a_run_deletes_old_runs_but_never_the_champion(nightly):
    client, bucket = nightly["client"], nightly["bucket"]
    runs = {key.split("/")[1] for key in s3_keys(client, bucket, "runs/") if key.count("/") > 1}
    assert runs == {"good", "worse", "promotions"}  # keep_runs: 1 kept `worse`, the champion stayed
    assert "retention: deleted 1 run(s) beyond the 1 newest: old" in nightly["worse"].stderr


def test_two_overlapping_runs_leave_the_better_one_champion(nightly):
    """Two runs at once on a fresh output: whatever the interleaving, each generation has one writer,
    the audit log has no gaps, and the pointer ends on the run that scores better on the same rows."""
    client, bucket, tmp, env = nightly["client"], nightly["bucket"], nightly["tmp"], nightly["env"]
    procs = {}
    # Both learn the demo data, one for 6 epochs, one for 2: with the same epochs, seeds 1, 2 and 3 all
    # scored 59 of 60, and a tie would let either run pass as the better one.
    for name, training in (("race-a", {**GOOD, "seed": 1}), ("race-b", {"num_train_epochs": 2, "seed": 2})):
        path = _config(tmp, bucket, "race", name, training)
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "job", "run", "--config", path], env={**env, "FINETUNE_RUN_ID": name},
            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    scores = {name: _json(client, bucket, f"race/{name}/metrics.json")["test_accuracy"] for name in procs}
    assert len(set(scores.values())) == 2, scores
    history = [_json(client, bucket, key) for key in s3_keys(client, bucket, "race/promotions/")]
    assert [r["generation"] for r in history] == list(range(1, len(history) + 1))
    assert 1 <= len(history) <= 2 and len({r["run_id"] for r in history}) == len(history)
    pointer = _json(client, bucket, "race/champion.json")
    assert pointer == history[-1]
    assert scores[pointer["run_id"]] == max(scores.values())
