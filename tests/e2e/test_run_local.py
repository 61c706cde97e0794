"""Runs to a local output directory: determinism, data sources and shapes, settings, predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DEMO, base_env, demo_rows, read_jsonl, run_cli, run_cli_here, sha256_of, tiny_config, write_jsonl, write_yaml



def _run(tmp_path: Path, cfg: dict, run_id: str, *sets: str, env=None, check=True, runner=run_cli_here):
    """A run in this process; runner=run_cli where a separate process is the point."""
    path = write_yaml(tmp_path / f"{run_id}.yaml", cfg)
    args = ["run", "--config", str(path)] + [a for s in sets for a in ("--set", s)]
    proc = runner(*args, env=env or base_env(FINETUNE_RUN_ID=run_id), cwd=tmp_path, check=check)
    return proc, tmp_path / "out" / run_id


def _predictions(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "predictions.jsonl")


def test_same_config_same_model_and_predictions(tmp_path):
    cfg = tiny_config(str(tmp_path / "out"))
    _, a = _run(tmp_path, cfg, "a", runner=run_cli)  # fresh processes: nothing carried over
    _, b = _run(tmp_path, cfg, "b", runner=run_cli)
    assert sha256_of(a / "model" / "model.safetensors") == sha256_of(b / "model" / "model.safetensors")
    assert sha256_of(a / "predictions.jsonl") == sha256_of(b / "predictions.jsonl")
    _, c = _run(tmp_path, cfg, "c", "training.seed=7", runner=run_cli)
    assert sha256_of(a / "model" / "model.safetensors") != sha256_of(c / "model" / "model.safetensors")


def test_files_with_carved_validation_and_an_unlabelled_test_split(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", demo_rows("train"))
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": r["text"]} for r in demo_rows("test")])
    cfg = tiny_config(str(tmp_path / "out"))
    cfg["data"] = {"train_files": str(train), "test_files": str(test), "max_length": 32}
    proc, run_dir = _run(tmp_path, cfg, "carved")
    assert "no validation split, carved 48 rows" in proc.stderr
    assert "train=432, validation=48, test=60" in proc.stderr
    rows = _predictions(run_dir)
    assert len(rows) == 60 and all(r["label"] is None for r in rows)
    assert {r["predicted"] for r in rows} <= {"negative", "positive"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test_accuracy" not in metrics and "eval_accuracy" in metrics


def test_carving_is_seeded(tmp_path):
    from job.data import sources
    from job.data.rows import ROW_ID
    from job.cli import config_loader

    train = write_jsonl(tmp_path / "train.jsonl", demo_rows("train"))
    path = write_yaml(tmp_path / "c.yaml", {"data": {"train_files": str(train)}})

    def membership(*sets):
        splits = sources.load_splits(config_loader.load(str(path), sets, use_env=False))
        return {name: sorted(ds[ROW_ID]) for name, ds in splits.items()}

    first, again, other = membership(), membership(), membership("training.seed=1")
    assert first == again
    assert first["test"] != other["test"]
    assert sorted(first["train"] + first["validation"] + first["test"]) == list(range(480))


def test_csv_text_pairs_with_three_string_labels(tmp_path):
    import csv
    import random

    rng = random.Random(0)
    words = {"left": ["north", "west", "port"], "right": ["south", "east", "starboard"], "centre": ["middle", "core", "hub"]}
    rows = []
    for i in range(300):
        label = rng.choice(sorted(words))
        rows.append({"question": f"where is item {i} ?", "context": f"it sits {rng.choice(words[label])} of here", "label": label})
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "context", "label"])
        writer.writeheader()
        writer.writerows(rows)
    cfg = tiny_config(str(tmp_path / "out"))
    cfg["data"] = {"train_files": str(tmp_path / "*.csv"), "text_column": "question", "text_pair_column": "context", "max_length": 32}
    cfg["training"]["num_train_epochs"] = 4
    _, run_dir = _run(tmp_path, cfg, "pairs")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"test_f1_macro", "test_f1_weighted", "test_precision_macro", "test_recall_weighted", "test_f1"} <= set(metrics)
    assert metrics["test_f1"] == metrics["test_f1_macro"]
    assert metrics["test_confusion_matrix"] and len(metrics["test_confusion_matrix"]) == 3
    model_cfg = json.loads((run_dir / "model" / "config.json").read_text())
    assert model_cfg["id2label"] == {"0": "centre", "1": "left", "2": "right"}  # sorted string labels
    row = _predictions(run_dir)[0]
    assert set(row) == {"id", "text", "text_pair", "label", "predicted", "probabilities"}
    assert set(row["probabilities"]) == {"centre", "left", "right"}


def test_parquet_glob_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    train = demo_rows("train")
    for i, part in enumerate((train[:240], train[240:])):
        pq.write_table(pa.Table.from_pylist(part), tmp_path / f"train-{i}.parquet")
    pq.write_table(pa.Table.from_pylist(demo_rows("validation")), tmp_path / "validation.parquet")
    pq.write_table(pa.Table.from_pylist(demo_rows("test")), tmp_path / "test.parquet")
    cfg = tiny_config(str(tmp_path / "out"))
    cfg["data"] = {
        "train_files": str(tmp_path / "train-*.parquet"),
        "validation_files": str(tmp_path / "validation.parquet"),
        "test_files": [str(tmp_path / "test.parquet")],
        "max_length": 32,
        "max_train_samples": 100,
        "max_predict_samples": 25,
    }
    proc, run_dir = _run(tmp_path, cfg, "parquet")
    assert "train=100, validation=60, test=25" in proc.stderr
    assert len(_predictions(run_dir)) == 25


def test_label_names_from_a_classlabel(tmp_path):
    """Parquet written by datasets keeps its ClassLabel; the model's id2label follows its order."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["pos", "neg"])})
    for split in ("train", "validation", "test"):
        rows = demo_rows(split)
        Dataset.from_dict(
            {"text": [r["text"] for r in rows], "label": [0 if r["label"] == "positive" else 1 for r in rows]}, features=features
        ).to_parquet(str(tmp_path / f"{split}.parquet"))
    cfg = tiny_config(str(tmp_path / "out"))
    cfg["data"] = {f"{s}_files": str(tmp_path / f"{s}.parquet") for s in ("train", "validation", "test")}
    _, run_dir = _run(tmp_path, cfg, "classlabel", "training.max_steps=5")
    assert json.loads((run_dir / "model" / "config.json").read_text())["label2id"] == {"pos": 0, "neg": 1}
    first = _predictions(run_dir)[0]
    assert first["label"] == ("pos" if demo_rows("test")[0]["label"] == "positive" else "neg")


def test_streaming_trains_from_an_iterable_dataset(tmp_path):
    cfg = tiny_config(str(tmp_path / "out"))
    cfg["data"].update(streaming=True, label_names=["negative", "positive"])
    cfg["training"] = {**cfg["training"], "max_steps": 20}
    proc, run_dir = _run(tmp_path, cfg, "stream")
    assert "train=stream, validation=60, test=60" in proc.stderr
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 20
    assert [r["id"] for r in _predictions(run_dir)] == list(range(60))


@pytest.mark.parametrize("bf16", [False, True])
def test_predict_command_matches_the_runs_predictions(bf16, tmp_path):
    # predict keeps the run's precision (finetune_job.json): bf16 on any CPU (emulated without bf16
    # instructions), fp32 also where bf16 is the default.
    _, run_dir = _run(tmp_path, tiny_config(str(tmp_path / "out"), training={"bf16": bf16}), "p")
    assert json.loads((run_dir / "model" / "finetune_job.json").read_text())["bf16"] is bf16
    out = tmp_path / "scored.jsonl"
    proc = run_cli_here("predict", "--model", str(run_dir / "model"), "--input", str(DEMO / "reviews.test.jsonl"), "--output", str(out), check=True)
    assert "60 predictions written" in proc.stdout
    assert read_jsonl(out) == _predictions(run_dir)


def test_json_logs_are_one_object_per_line(tmp_path):
    path = write_yaml(tmp_path / "j.yaml", tiny_config(str(tmp_path / "out")))
    proc = run_cli_here("--log-format", "json", "run", "--config", str(path), "--set", "training.max_steps=3", cwd=tmp_path, check=True)
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any("logs" in r and "loss" in r["logs"] for r in records)


def test_secrets_never_reach_logs_or_outputs(tmp_path):
    secrets = {
        "AWS_SECRET_ACCESS_KEY": "aws/Secret+Value0123456789",
        "AWS_ACCESS_KEY_ID": "AKIASECRETACCESSKEYID",
        "HF_TOKEN": "hf_HuggingFaceTokenValue123",
    }
    config_token = "hf_TokenFromTheConfigFile456"
    cfg = tiny_config(str(tmp_path / "out"))
    cfg["training"]["hub_token"] = config_token
    env = base_env(**secrets, FINETUNE_RUN_ID="secret")
    proc, run_dir = _run(tmp_path, cfg, "secret", "training.max_steps=3", env=env, runner=run_cli)  # all the process prints
    # An error that echoes user input: the model name is the HF token itself.
    bad = run_cli("--debug", "check", "--config", str(tmp_path / "secret.yaml"), "--set", f"model.name={secrets['HF_TOKEN']}", env=env, cwd=tmp_path)
    shown = run_cli("config", "--config", str(tmp_path / "secret.yaml"), env=env, cwd=tmp_path, check=True)
    assert bad.returncode == 5 and "model error: model.name: ***" in bad.stderr
    texts = [proc.stdout, proc.stderr, bad.stdout, bad.stderr, shown.stdout]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in run_dir.rglob("*") if p.is_file()]
    for secret in [*secrets.values(), config_token]:
        assert not any(secret in text for text in texts), secret
