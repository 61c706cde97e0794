"""`make bench-transfer`: full fine-tuning, head-only and LoRA on a pretrained encoder, one table.

    python benchmarks/bench_transfer.py                       # all-MiniLM-L6-v2 on the rotten_tomatoes rebuild
    python benchmarks/bench_transfer.py --train-rows 1000     # a quicker look on a subset

Each row is one real `finetune-job run` in its own process on the same data (../shared's
rotten_tomatoes rebuild, 8530/1066/1066 rows; all-MiniLM-L6-v2), batch 32, max_length 128, seed 42,
changing only `model.train` and what the row says:

- all: 1 epoch at Trainer's (and the mode's) learning rate, 5e-5: the lecture's fine-tuning;
- head: nothing else: the mode's own defaults (job/training/trainers.py MODE_DEFAULTS: 10 epochs at 1e-2 on
  the cached vectors, mean pooling);
- lora: 1 epoch, like the full row, at the mode's default rate (1e-3), rank 8 on every linear layer.

Wall time is the whole process (imports, loading, tokenizing, the body's feature pass, training,
evaluation, report), and "x full" is its ratio to the full row of this same invocation. Train
samples/s is Trainer's: for head it counts the head's passes over the cached vectors (all 10
epochs), so it is no measure of the body.
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
from bench_padding import run_job  # noqa: E402
from conftest import SHARED, base_env, write_yaml  # noqa: E402
from support.rotten_tomatoes import write  # noqa: E402


MODEL = SHARED / "models" / "all-MiniLM-L6-v2"
ROWS = {  # head first: the quickest row fails (if it must) before the hour the others take on two cores
    "head": {},
    "all": {"num_train_epochs": 1},
    "lora": {"num_train_epochs": 1},
}


def config_for(mode: str, files: dict, out: Path, max_length: int) -> dict:
    return {
        "model": {"name": str(MODEL), "train": mode},
        "data": {**files, "label_names": ["neg", "pos"], "max_length": max_length},
        "output": {"uri": str(out)},
        "promotion": {"mode": "never"},  # no row pays for scoring another row's model as its champion
        "training": {"per_device_train_batch_size": 32, "per_device_eval_batch_size": 128, **ROWS[mode]},
    }


def measure(mode: str, files: dict, folder: Path, max_length: int) -> dict:
    config = write_yaml(folder / f"{mode}.yaml", config_for(mode, files, folder / "out", max_length))
    wall, rss = run_job(config, f"bench-{mode}", folder)
    metrics = json.loads((folder / "out" / f"bench-{mode}" / "metrics.json").read_text())
    return {"mode": mode, "wall_s": wall, "peak_rss_mib": rss, **metrics}


def print_table(rows: list[dict]) -> None:
    full = next((r for r in rows if r["mode"] == "all"), None)
    print("| mode | test accuracy | test F1 | trainable parameters | wall s | x full | train samples/s | body feature pass s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['wall_s'] / full['wall_s']:.2f}x" if full else "-"
        features = f"{r['features_seconds']:.1f}" if "features_seconds" in r else "-"
        print(f"| {r['mode']} | {r['test_accuracy']:.4f} | {r['test_f1']:.4f} | {r['trainable_parameters']:,} "
              f"({r['trainable_share']:.2%}) | {r['wall_s']:.1f} | {ratio} | {r['train_samples_per_second']:.1f} | {features} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--train-rows", type=int, help="train on this many rows (half of each label); all 8530 when unset")
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    if not MODEL.is_dir():
        sys.exit(f"{MODEL} is missing: this benchmark needs ../shared")
    os.environ.update(base_env())

    rows = []
    with tempfile.TemporaryDirectory(prefix="finetune-bench-transfer-") as tmp:
        folder = Path(tmp)
        files = {f"{split}_files": str(path) for split, path in write(folder, {"train": args.train_rows}).items()}
        for mode in args.modes:
            rows.append(measure(mode, files, folder, args.max_length))
            print(f"{mode}: {rows[-1]['wall_s']:.1f} s, test accuracy {rows[-1]['test_accuracy']:.4f}", file=sys.stderr)

    print(f"\nfinetune-job transfer benchmark: {MODEL.name} on the rotten_tomatoes rebuild "
          f"({args.train_rows or 8530} train rows, 1066 test), batch 32, max_length {args.max_length}, CPU x{os.cpu_count()}")
    print_table(rows)
    print("x full: wall time against the `all` row of this same invocation (lower is cheaper).")


if __name__ == "__main__":
    main()
