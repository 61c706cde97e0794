"""End to end against the real S3 server, outputs in the bucket: the published run is the CLI as a
subprocess, the commands after it run in-process (run_cli_here)."""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import base_env, run_cli, run_cli_here, s3_keys, tiny_config, write_yaml

RUN_FILES = {"config.yaml", "metrics.json", "predictions.jsonl", "trainer_state.json", "_SUCCESS"}


@pytest.fixture(scope="module")
def published(s3_server, tmp_path_factory):
    """One real run published to S3, shared by the assertions below (training once keeps them fast)."""
    client = s3_server.client()
    client.create_bucket(Bucket="published")
    tmp = tmp_path_factory.mktemp("published")
    cfg = write_yaml(tmp / "job.yaml", tiny_config("s3://published/runs"))
    env = base_env(**s3_server.env(), FINETUNE_RUN_ID="run-1")
    proc = run_cli("run", "--config", str(cfg), env=env, cwd=tmp, check=True)
    return {"client": client, "bucket": "published", "prefix": "runs/run-1", "proc": proc, "config": cfg, "env": env, "tmp": tmp}



def test_outputs_land_in_the_bucket_with_a_verifiable_manifest(published):
    client, bucket, prefix = published["client"], published["bucket"], published["prefix"]
    keys = s3_keys(client, bucket, prefix)
    names = {k[len(prefix) + 1 :] for k in keys}
    assert RUN_FILES <= names
    assert {"model/config.json", "model/model.safetensors", "model/tokenizer.json"} <= names
    assert not any(n.endswith("training_args.bin") for n in names)

    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/_SUCCESS")["Body"].read())
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == names - {"_SUCCESS"}
    for path, entry in listed.items():
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/{path}")["Body"].read()
        assert len(body) == entry["size"], path
        assert hashlib.sha256(body).hexdigest() == entry["sha256"], path
    assert "outputs: s3://published/runs/run-1/" in published["proc"].stdout


def test_saved_model_reloads_and_reproduces_the_predictions(published, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    client, bucket, prefix = published["client"], published["bucket"], published["prefix"]
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for key in s3_keys(client, bucket, f"{prefix}/model/"):
        client.download_file(bucket, key, str(model_dir / key.rsplit("/", 1)[1]))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    assert model.config.id2label == {0: "negative", 1: "positive"}

    body = client.get_object(Bucket=bucket, Key=f"{prefix}/predictions.jsonl")["Body"].read().decode()
    rows = [json.loads(line) for line in body.splitlines()]
    demo_test = [json.loads(l) for l in open(__import__("job").__path__[0] + "/demo/reviews.test.jsonl")]
    assert [r["id"] for r in rows] == list(range(len(demo_test)))  # file order, keyed by row id
    assert [r["text"] for r in rows] == [r["text"] for r in demo_test]
    assert [r["label"] for r in rows] == [r["label"] for r in demo_test]
    # In the run's precision (finetune_job.json; bf16 is the default on a CPU with bf16 instructions),
    # to its rounding: bf16 keeps 8 bits of each product's inputs, and these batches pad otherwise.
    bf16 = json.loads((model_dir / "finetune_job.json").read_text())["bf16"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        batch = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=32, return_tensors="pt")
        probabilities = model(**batch).logits.float().softmax(-1)
    for row, p in zip(rows, probabilities):
        assert row["predicted"] == model.config.id2label[int(p.argmax())]
        assert row["probabilities"]["positive"] == pytest.approx(float(p[1]), abs=2e-3 if bf16 else 1e-4)


def test_metrics_hold_sklearn_scores_and_the_confusion_matrix(published):
    client, bucket, prefix = published["client"], published["bucket"], published["prefix"]
    metrics = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/metrics.json")["Body"].read())
    for key in ("test_accuracy", "test_f1", "test_precision", "test_recall", "eval_accuracy", "train_loss"):
        assert isinstance(metrics[key], float), key
    matrix = metrics["test_confusion_matrix"]
    assert sum(map(sum, matrix)) == 60 and len(matrix) == 2
    assert metrics["test_accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / 60)
    assert set(metrics["test_classification_report"]) >= {"negative", "positive", "macro avg"}
    assert metrics["test_accuracy"] > 0.7  # the tiny model does learn the demo data


def test_rerunning_a_finished_run_id_does_nothing(published):
    client, bucket, prefix = published["client"], published["bucket"], published["prefix"]

    def versions():
        return {key: client.head_object(Bucket=bucket, Key=key)["LastModified"] for key in s3_keys(client, bucket, prefix)}

    before = versions()
    proc = run_cli_here("run", "--config", str(published["config"]), env=published["env"], cwd=published["tmp"], check=True)
    assert "already finished" in proc.stderr
    assert versions() == before  # nothing rewritten, nothing added
    proc = run_cli_here(
        "run", "--config", str(published["config"]), "--set", "training.num_train_epochs=1",
        env=published["env"], cwd=published["tmp"],
    )
    assert proc.returncode == 3
    assert "config error: run_id: run run-1 already finished with a different config" in proc.stderr


def test_wrong_credentials_fail_with_the_storage_exit_code(s3_server, bucket, tmp_path):
    cfg = write_yaml(tmp_path / "job.yaml", tiny_config(f"s3://{bucket}/runs"))
    env = base_env(**{**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret-0123456789"})
    proc = run_cli_here("run", "--config", str(cfg), "--set", "s3.max_attempts=1", env=env, cwd=tmp_path)
    assert proc.returncode == 6, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "storage error:" in last and "SignatureDoesNotMatch" in last
    assert "Traceback" not in proc.stderr
    assert "not-the-secret-0123456789" not in proc.stderr + proc.stdout


def test_unreachable_storage_fails_fast_with_the_storage_exit_code(s3_server, tmp_path):
    cfg = write_yaml(tmp_path / "job.yaml", tiny_config("s3://nowhere/runs"))
    env = base_env(**{**s3_server.env(), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    proc = run_cli("run", "--config", str(cfg), "--set", "s3.max_attempts=1", env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 6, proc.stderr
    assert "storage error: s3://nowhere/runs/" in proc.stderr and "Could not connect" in proc.stderr


def test_data_and_model_from_s3_and_predict_to_s3(s3_server, published, bucket, tmp_path):
    """Train from s3:// files, starting from the published model's s3:// prefix; then batch-predict."""
    import job

    client = s3_server.client()
    demo = job.__path__[0] + "/demo"
    for split in ("train", "validation", "test"):
        client.upload_file(f"{demo}/reviews.{split}.jsonl", bucket, f"data/{split}/part-0.jsonl")
    cfg = tiny_config(f"s3://{bucket}/runs")
    cfg["model"] = {"name": f"s3://{published['bucket']}/{published['prefix']}/model"}
    cfg["data"] = {
        "train_files": f"s3://{bucket}/data/train/*.jsonl",
        "validation_files": f"s3://{bucket}/data/validation/part-0.jsonl",
        "test_files": f"s3://{bucket}/data/test/*.jsonl",
        "max_length": 32,
    }
    cfg["training"]["num_train_epochs"] = 1
    path = write_yaml(tmp_path / "job.yaml", cfg)
    env = base_env(**s3_server.env(), FINETUNE_RUN_ID="from-s3")
    proc = run_cli_here("run", "--config", str(path), env=env, cwd=tmp_path, check=True)
    assert "data: data.train_files" in proc.stderr and "train=480" in proc.stderr
    assert client.head_object(Bucket=bucket, Key="runs/from-s3/_SUCCESS")

    client.upload_file(f"{demo}/reviews.test.jsonl", bucket, "incoming/new.jsonl")
    proc = run_cli_here(
        "predict", "--model", f"s3://{bucket}/runs/from-s3/model",
        "--input", f"s3://{bucket}/incoming/new.jsonl", "--output", f"s3://{bucket}/scored/out.jsonl",
        env=env, cwd=tmp_path, check=True,
    )
    assert "60 predictions written" in proc.stdout
    scored = client.get_object(Bucket=bucket, Key="scored/out.jsonl")["Body"].read().decode().splitlines()
    published_rows = client.get_object(Bucket=bucket, Key="runs/from-s3/predictions.jsonl")["Body"].read().decode().splitlines()
    assert [json.loads(r)["predicted"] for r in scored] == [json.loads(r)["predicted"] for r in published_rows]


def test_check_probes_the_bucket_and_leaves_nothing(s3_server, bucket, tmp_path):
    cfg = write_yaml(tmp_path / "job.yaml", tiny_config(f"s3://{bucket}/runs"))
    proc = run_cli_here("check", "--config", str(cfg), env=base_env(**s3_server.env()), cwd=tmp_path, check=True)
    assert "config: ok" in proc.stdout and "labels negative, positive" in proc.stdout
    assert f"output: ok (s3://{bucket}/runs is writable)" in proc.stdout
    assert "model: ok" in proc.stdout
    assert s3_keys(s3_server.client(), bucket, "") == []


def test_multipart_upload_is_used_above_the_threshold(s3_server, bucket, tmp_path):
    from job.config import S3Config
    from job.storage import open_store

    big = tmp_path / "big.bin"
    big.write_bytes(__import__("os").urandom(12 * 1024 * 1024))
    import os

    env_backup = {k: os.environ.get(k) for k in s3_server.env()}
    os.environ.update(s3_server.env())
    try:
        store = open_store(f"s3://{bucket}/x", S3Config(multipart_threshold_mb=5, multipart_chunksize_mb=5))
        store.put_file(big, "big.bin")
    finally:
        for k, v in env_backup.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    head = s3_server.client().head_object(Bucket=bucket, Key="x/big.bin")
    assert head["ContentLength"] == 12 * 1024 * 1024
    assert head["ETag"].strip('"').endswith("-3")  # three 5 MB parts
