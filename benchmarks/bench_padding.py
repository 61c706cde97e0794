"""`make bench`: the job's defaults against padding every batch to max_length (the HF example scripts' default),
and for causal-lm, packed documents against blocks cut across documents.

    python benchmarks/bench_padding.py                  # rotten_tomatoes rebuild from ../shared, 1 epoch; Multi30k captions
    python benchmarks/bench_padding.py --epochs 2 --max-length 128

Each variant is one real `finetune-job run` in its own process (builtin tiny BERT, same seed, same data),
so wall time and peak RSS are the whole job's. Train samples/s and tokens/s come from the run's
metrics.json. The share of padded tokens is counted over one epoch of the training batches the job's
own data loader yields for that config (job/training/throughput.py's count of real tokens). Ratios are against
the first row of the table, measured in the same invocation.

The causal-lm table trains builtin:tiny-gpt on 5000 of Multi30k's English captions (a document each)
in blocks of max_length: packing off concatenates them and cuts blocks across documents (the job's
behaviour before packing; attention crosses documents); packed keeps each caption whole, from its own
position 0, attending only to itself. A sample is a block in both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the other benchmarks
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # conftest's helpers, support/
from bench_gpu import job_recipe  # noqa: E402
from conftest import SHARED, base_env, rotten_tomatoes_splits, write_jsonl, write_yaml  # noqa: E402

VARIANTS = {
    "pad to max_length (HF examples)": {"data": {"pad_to_max_length": True}, "training": {"train_sampling_strategy": "random"}},
    "dynamic padding, random order": {"training": {"train_sampling_strategy": "random"}},
    "job defaults (dynamic + length-grouped)": {},
}
BASELINE = "pad to max_length (HF examples)"
LM_VARIANTS = {
    "blocks across documents (packing off)": {"task": {"name": "causal-lm", "packing": False}},
    "packed documents (job default)": {},
}
MULTI30K = SHARED / "data" / "multi30k-en-de"


def write_data(folder: Path) -> tuple[dict, str]:
    if (SHARED / "data" / "rt-polaritydata").is_dir():
        for name, rows in rotten_tomatoes_splits().items():
            write_jsonl(folder / f"{name}.jsonl", rows)
        files = {f"{name}_files": str(folder / f"{name}.jsonl") for name in ("train", "validation", "test")}
        return {**files, "label_names": ["neg", "pos"]}, "rotten_tomatoes rebuilt from ../shared (8530 train rows)"
    return {"dataset": "builtin:sentiment-demo"}, "the shipped demo data (../shared not found)"


def config_for(variant: dict, data: dict, args, out: Path) -> dict:
    cfg = {
        "model": {"name": "builtin:tiny-bert"},
        "data": {**data, "max_length": args.max_length, **variant.get("data", {})},
        "output": {"uri": str(out)},
        "training": {
            "num_train_epochs": args.epochs,
            "learning_rate": 0.001,
            "per_device_train_batch_size": 32,
            "per_device_eval_batch_size": 128,
            "eval_strategy": "no",
            "logging_steps": 100,
            **variant.get("training", {}),
        },
    }
    return cfg


def lm_config_for(variant: dict, args, out: Path) -> dict:
    files = {"train_files": "train.en.gz", "validation_files": "val.en.gz", "test_files": "test_2016_flickr.en.gz"}
    return {
        "task": {"name": "causal-lm", **variant.get("task", {})},
        "model": {"name": "builtin:tiny-gpt"},
        "data": {**{k: str(MULTI30K / v) for k, v in files.items()}, "format": "text", "max_length": args.max_length,
                 "max_train_samples": 5000, "max_eval_samples": 500, "max_predict_samples": 200},
        "output": {"uri": str(out)},
        "training": {"num_train_epochs": args.epochs, "learning_rate": 0.003, "per_device_train_batch_size": 16,
                     "per_device_eval_batch_size": 32, "eval_strategy": "no", "logging_steps": 100},
    }


def run_job(config: Path, run_id: str, cwd: Path) -> tuple[float, int]:
    """Run the job; return (wall seconds, peak RSS in MiB) of that process."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "job", "run", "--config", str(config)],
        env=base_env(FINETUNE_RUN_ID=run_id), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench run {run_id} failed:\n{proc.stderr.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss // 1024


def padded_share(config: Path) -> float:
    """Share of padding in one epoch of the training batches the job would feed the model."""
    from job.cli import config_loader
    from job.training import throughput

    cfg = config_loader.load(str(config), use_env=False)
    with tempfile.TemporaryDirectory() as work:
        trainer = job_recipe(cfg, Path(work))[0]
        real = total = 0
        for batch in trainer.get_train_dataloader():
            real += int(throughput.batch_tokens(batch)[0])  # packed batches have no attention mask
            total += batch["input_ids"].numel()
    return 1 - real / total


def measure(name: str, raw: dict, folder: Path, i: int) -> dict:
    config = write_yaml(folder / f"variant{i}.yaml", raw)
    wall, rss = run_job(config, f"bench-{i}", folder)
    metrics = json.loads((folder / "out" / f"bench-{i}" / "metrics.json").read_text())
    return {
        "variant": name,
        "wall_s": wall,
        "train_samples_s": metrics["train_samples_per_second"],
        "train_tokens_s": metrics["train_tokens_per_second"],
        "padded": padded_share(config),
        "peak_rss_mib": rss,
        "score": metrics.get("test_accuracy", metrics.get("test_perplexity", float("nan"))),
    }


def print_table(title: str, rows: list[dict], score: str) -> None:
    base = rows[0]
    print(f"\n{title}")
    header = (f"{'variant':42} {'wall s':>8} {'x base':>7} {'train samples/s':>16} {'x base':>7} {'train tokens/s':>15} "
              f"{'x base':>7} {'padded tokens':>14} {'peak RSS MiB':>13} {score:>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['variant']:42} {r['wall_s']:8.1f} {base['wall_s'] / r['wall_s']:6.2f}x {r['train_samples_s']:16.1f} "
            f"{r['train_samples_s'] / base['train_samples_s']:6.2f}x {r['train_tokens_s']:15.0f} "
            f"{r['train_tokens_s'] / base['train_tokens_s']:6.2f}x {r['padded']:13.1%} {r['peak_rss_mib']:13d} {r['score']:9.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--only", choices=("classification", "causal-lm"), help="one of the two tables")
    args = parser.parse_args()
    os.environ.update(base_env())

    rows, lm_rows = [], []
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp:
        folder = Path(tmp)
        data, described = write_data(folder)
        if args.only != "causal-lm":
            for i, (name, variant) in enumerate(VARIANTS.items()):
                rows.append(measure(name, config_for(variant, data, args, folder / "out"), folder, i))
        if args.only != "classification" and MULTI30K.is_dir():
            for i, (name, variant) in enumerate(LM_VARIANTS.items(), start=len(VARIANTS)):
                lm_rows.append(measure(name, lm_config_for(variant, args, folder / "out"), folder, i))

    print(f"\nfinetune-job padding benchmark: {args.epochs:g} epoch(s), max_length {args.max_length}, "
          f"CPU x{os.cpu_count()}, torch threads default")
    if rows:
        print_table(f"text-classification: {described}; builtin:tiny-bert, batch 32", rows, "test acc")
    if lm_rows:
        print_table("causal-lm: 5000 Multi30k English captions; builtin:tiny-gpt, batch 16 blocks", lm_rows, "test ppl")
    print("x base: against the first row of its table in this same run (higher is faster). Train tokens/s counts "
          "non-padding tokens; padded tokens: the share of padding in one epoch of the training batches.")


if __name__ == "__main__":
    main()
