"""Real data from ../shared: rotten_tomatoes rebuilt with HF's exact split rule, then trained on."""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import SHARED, base_env, read_jsonl, rotten_tomatoes_splits, run_cli, write_jsonl, write_yaml

pytestmark = pytest.mark.skipif(not (SHARED / "data" / "rt-polaritydata").is_dir(), reason="../shared is not present")

# sha256 of "\n".join(f"{label}\t{text}") per split, from ../shared/data/rt-polaritydata/PROVENANCE.md
FINGERPRINTS = {
    "train": "e2d0a64a6ced4551fe6b155f64ef4b7958d6d7fc7d7943377f88151c910de81d",
    "validation": "4fa426b7f6066922fd54df09ff87a433512f039f2c8cb8be701e64c911e1c138",
    "test": "62d73854dc1d0f63de5b2b9beafcb8d88b9f5f74ba895b985026c3b0baca1305",
}


def test_rebuild_matches_hf_rotten_tomatoes():
    splits = rotten_tomatoes_splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 8530, "validation": 1066, "test": 1066}
    for name, rows in splits.items():
        text = "\n".join(f"{r['label']}\t{r['text']}" for r in rows)
        assert hashlib.sha256(text.encode()).hexdigest() == FINGERPRINTS[name], name
    assert splits["test"][0]["text"].startswith("lovingly photographed in the manner of a golden book")


@pytest.mark.slow
def test_train_on_rotten_tomatoes(tmp_path):
    for name, rows in rotten_tomatoes_splits().items():
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
    cfg = {
        "model": {"name": "builtin:tiny-bert"},
        "data": {
            "train_files": str(tmp_path / "train.jsonl"),
            "validation_files": str(tmp_path / "validation.jsonl"),
            "test_files": str(tmp_path / "test.jsonl"),
            "label_names": ["neg", "pos"],  # HF's ClassLabel: neg = 0, pos = 1
            "max_length": 64,
        },
        "output": {"uri": str(tmp_path / "out")},
        "training": {"num_train_epochs": 1, "learning_rate": 0.001, "per_device_train_batch_size": 32,
                     "per_device_eval_batch_size": 128, "warmup_steps": 50, "logging_steps": 50},
    }
    path = write_yaml(tmp_path / "rt.yaml", cfg)
    proc = run_cli("run", "--config", str(path), env=base_env(FINETUNE_RUN_ID="rt"), cwd=tmp_path, check=True)
    assert "train=8530, validation=1066, test=1066" in proc.stderr
    metrics = json.loads((tmp_path / "out" / "rt" / "metrics.json").read_text())
    assert sum(map(sum, metrics["test_confusion_matrix"])) == 1066
    # A 2-layer BERT trained from scratch for one epoch: well above chance (0.5), far from a pretrained model.
    assert metrics["test_accuracy"] > 0.62, metrics["test_accuracy"]
    rows = read_jsonl(tmp_path / "out" / "rt" / "predictions.jsonl")
    assert [r["id"] for r in rows] == list(range(1066))
    assert rows[0]["label"] == "pos" and rows[-1]["label"] == "neg"
