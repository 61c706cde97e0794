"""`make bench` (second table): what evaluating during training costs, per-epoch against the job's defaults.

    python benchmarks/bench_evaluation.py                 # E2E NLG data-to-text (seq2seq) and the rotten_tomatoes rebuild

Each row is one real `finetune-job run` in its own process, same seed and data. seq2seq generates text to
evaluate, which dominates short runs: the job evaluates it once, at the end, where Hugging Face's
example scripts (and the job before) evaluated every epoch. Classification evaluates every epoch and
reuses the last epoch's evaluation as the final validation metrics, where it used to evaluate once more:
the table shows the validation passes each run made (from trainer_state.json) and the seconds of the one
pass no longer repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the other benchmarks
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # conftest's helpers, support/
from bench_padding import run_job, write_data  # noqa: E402
from conftest import SHARED, base_env, write_yaml  # noqa: E402

E2E = SHARED / "data" / "e2e-nlg"


def seq2seq_config(out: Path, epochs: float, **training) -> dict:
    return {
        "task": {"name": "seq2seq", "max_target_length": 64, "max_new_tokens": 48},
        "model": {"name": "builtin:tiny-t5"},
        "data": {"train_files": str(E2E / "devset.csv"), "test_files": str(E2E / "testset_w_refs.csv"), "text_column": "mr",
                 "label_column": "ref", "max_length": 64, "max_train_samples": 2000, "max_eval_samples": 200, "max_predict_samples": 200},
        "output": {"uri": str(out)},
        "training": {"num_train_epochs": epochs, "learning_rate": 0.003, "per_device_train_batch_size": 32,
                     "per_device_eval_batch_size": 64, "logging_steps": 50, **training},
    }


def classification_config(data: dict, out: Path, epochs: float) -> dict:
    return {
        "model": {"name": "builtin:tiny-bert"},
        "data": {**data, "max_length": 128},
        "output": {"uri": str(out)},
        "training": {"num_train_epochs": epochs, "learning_rate": 0.001, "per_device_train_batch_size": 32,
                     "per_device_eval_batch_size": 128, "logging_steps": 100},
    }


def measure(name: str, raw: dict, folder: Path, i: int) -> dict:
    wall, _ = run_job(write_yaml(folder / f"eval{i}.yaml", raw), f"eval-{i}", folder)
    run = folder / "out" / f"eval-{i}"
    metrics = json.loads((run / "metrics.json").read_text())
    passes = [e for e in json.loads((run / "trainer_state.json").read_text())["log_history"] if "eval_loss" in e]
    return {"variant": name, "wall_s": wall, "passes": len(passes), "eval_s": sum(e["eval_runtime"] for e in passes),
            "last_pass_s": passes[-1]["eval_runtime"] if passes else 0.0,
            "score": metrics.get("test_bleu", metrics.get("test_accuracy"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=2)
    args = parser.parse_args()
    os.environ.update(base_env())
    rows = []
    with tempfile.TemporaryDirectory(prefix="finetune-bench-eval-") as tmp:
        folder = Path(tmp)
        if E2E.is_dir():
            rows.append(measure("seq2seq: evaluate every epoch (before)", seq2seq_config(folder / "out", args.epochs, eval_strategy="epoch"), folder, 0))
            rows.append(measure("seq2seq: job default (once, at the end)", seq2seq_config(folder / "out", args.epochs), folder, 1))
        data, _ = write_data(folder)
        rows.append(measure("text-classification: job default", classification_config(data, folder / "out", args.epochs), folder, 2))

    print(f"\nfinetune-job evaluation benchmark: {args.epochs:g} epochs, CPU x{os.cpu_count()}")
    header = f"{'variant':42} {'wall s':>8} {'x first':>8} {'validation passes':>18} {'in them s':>10} {'score':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['variant']:42} {r['wall_s']:8.1f} {rows[0]['wall_s'] / r['wall_s']:7.2f}x {r['passes']:18d} {r['eval_s']:10.1f} {r['score']:8.3f}")
    classification = rows[-1]
    print(f"score: test BLEU (seq2seq, 0-100) or test accuracy. Text-classification reused its last epoch's validation pass "
          f"as the final one, where the job used to evaluate once more: {classification['last_pass_s']:.1f} s saved.")


if __name__ == "__main__":
    main()
