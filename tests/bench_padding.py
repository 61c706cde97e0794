"""`make bench`: the job's defaults against padding every batch to max_length (the HF example scripts' default).

    python tests/bench_padding.py                  # rotten_tomatoes rebuild from ../shared, 1 epoch
    python tests/bench_padding.py --epochs 2 --max-length 128

Each variant is one real `finetune-job run` in its own process (builtin tiny BERT, same seed, same data),
so wall time and peak RSS are the whole job's. Train samples/s come from the run's metrics.json. The
share of padded tokens is counted over one epoch of the training batches the job's own data loader
yields for that config. Ratios are against the padded baseline measured in the same invocation.
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

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SHARED, base_env, rotten_tomatoes_splits, write_jsonl, write_yaml  # noqa: E402

VARIANTS = {
    "pad to max_length (HF examples)": {"data": {"pad_to_max_length": True}, "training": {"train_sampling_strategy": "random"}},
    "dynamic padding, random order": {"training": {"train_sampling_strategy": "random"}},
    "job defaults (dynamic + length-grouped)": {},
}
BASELINE = "pad to max_length (HF examples)"


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
    from job import config as config_module
    from job import data, models, tasks, training

    cfg = config_module.load(str(config), use_env=False)
    task = tasks.get(cfg.task.name)
    raw = data.load_splits(cfg)
    spec = task.inspect(raw, cfg)
    with tempfile.TemporaryDirectory() as work:
        tokenizer, model = models.load(cfg, task, spec, raw["train"], Path(work))
        if hasattr(task, "fit_to_model"):
            spec = task.fit_to_model(spec, model, cfg)
        features = task.preprocess(raw, tokenizer, cfg, spec)
        collator = task.collator(tokenizer, cfg, spec, pad_to_multiple_of=None)
        args = training.arguments(cfg, Path(work) / "trainer", progress_bars=False)
        trainer = training.trainer(cfg, args, model, tokenizer, features, collator, compute_metrics=None)
        real = total = 0
        for batch in trainer.get_train_dataloader():
            mask = batch["attention_mask"]
            real += int(mask.sum())
            total += mask.numel()
    return 1 - real / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    os.environ.update(base_env())

    rows = []
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp:
        folder = Path(tmp)
        data, described = write_data(folder)
        for i, (name, variant) in enumerate(VARIANTS.items()):
            config = write_yaml(folder / f"variant{i}.yaml", config_for(variant, data, args, folder / "out"))
            wall, rss = run_job(config, f"bench-{i}", folder)
            metrics = json.loads((folder / "out" / f"bench-{i}" / "metrics.json").read_text())
            rows.append({
                "variant": name,
                "wall_s": wall,
                "train_samples_s": metrics["train_samples_per_second"],
                "padded": padded_share(config),
                "peak_rss_mib": rss,
                "test_accuracy": metrics.get("test_accuracy", float("nan")),
            })

    base = next(r for r in rows if r["variant"] == BASELINE)
    print(f"\nfinetune-job padding benchmark: {described}; builtin:tiny-bert, {args.epochs:g} epoch(s), "
          f"max_length {args.max_length}, batch 32, CPU x{os.cpu_count()}, torch threads default")
    header = f"{'variant':42} {'wall s':>8} {'x base':>7} {'train samples/s':>16} {'x base':>7} {'padded tokens':>14} {'peak RSS MiB':>13} {'test acc':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['variant']:42} {r['wall_s']:8.1f} {base['wall_s'] / r['wall_s']:6.2f}x {r['train_samples_s']:16.1f} "
            f"{r['train_samples_s'] / base['train_samples_s']:6.2f}x {r['padded']:13.1%} {r['peak_rss_mib']:13d} {r['test_accuracy']:9.4f}"
        )
    print("x base: speed-up against the padded baseline in this same run (higher is faster).")


if __name__ == "__main__":
    main()
