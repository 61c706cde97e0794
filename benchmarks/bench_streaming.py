"""`make bench-streaming`: ten million rows streamed from S3, peak memory and time spent waiting for data.

    python benchmarks/bench_streaming.py                            # 10,000,000 rows, 150 steps per variant
    python benchmarks/bench_streaming.py --rows 1000000 --steps 40  # a quicker look

The benchmark writes a text-classification dataset of `--rows` rows as `--shards` JSON-lines files
(each row drawn from a pool of 50,000 sentences generated from a word list, the label from the words:
an easy task, this measures reading, not learning), uploads them to a SeaweedFS S3 server it starts
(tests/conftest.py's), and runs `finetune-job run` with `data.streaming: true` on
`s3://bench/stream/train-*.jsonl` for `--steps` steps (training.max_steps) once per DataLoader
variant: no workers, then 1 and 2 workers with a prefetch factor of 2 and 4.

Per variant: wall time of the process, seconds per step, peak RSS of the job's whole process tree
(the job and its DataLoader workers, read from /proc every 0.1 s; summed RSS counts shared pages
once per process, so it overstates), and data wait: the seconds the training loop waited for its
next batches (metrics.json's `train_data_wait_seconds`, what reading from S3, tokenizing on the fly
and collating did not have ready) over train_runtime. The goals (issue 21): peak RSS under
1 GB and data wait under 5% of the step time. The model is all-MiniLM-L6-v2 from ../shared, batch 32,
max_length 64.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # conftest's helpers
from conftest import SHARED, base_env, free_s3_port, start_s3, stop_s3, write_jsonl, write_yaml  # noqa: E402

MODEL = SHARED / "models" / "all-MiniLM-L6-v2"
GOOD = ("bright", "warm", "moving", "clever", "tender", "gripping", "funny", "fresh", "honest", "lovely")
BAD = ("dull", "flat", "tired", "clumsy", "hollow", "shrill", "stale", "muddled", "smug", "limp")
FILLER = ("the", "film", "story", "cast", "plot", "a", "is", "and", "with", "its", "director", "scene", "ending",
          "score", "pace", "script", "of", "in", "this", "that", "feels", "looks", "turns", "every", "minute")
VARIANTS = [  # (name, TrainingArguments overrides)
    ("no DataLoader workers (the default)", {"dataloader_num_workers": 0}),
    ("1 worker, prefetch 2", {"dataloader_num_workers": 1, "dataloader_prefetch_factor": 2}),
    ("2 workers, prefetch 2", {"dataloader_num_workers": 2, "dataloader_prefetch_factor": 2}),
    ("2 workers, prefetch 4", {"dataloader_num_workers": 2, "dataloader_prefetch_factor": 4}),
]


def sentence(rng: random.Random) -> tuple[str, int]:
    label = rng.random() < 0.5
    words = [rng.choice(FILLER) for _ in range(rng.randint(6, 30))]
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randrange(len(words)), rng.choice(GOOD if label else BAD))
    return " ".join(words), int(label)


def write_shards(folder: Path, rows: int, shards: int, seed: int = 0) -> list[Path]:
    """`rows` rows over `shards` files; each line is built from a pool of sentences, with its own id."""
    rng = random.Random(seed)
    pool = [sentence(rng) for _ in range(50_000)]
    lines = [json.dumps({"text": text, "label": label}) for text, label in pool]
    paths, per_shard = [], -(-rows // shards)
    for shard in range(shards):
        path = folder / f"train-{shard:05d}.jsonl"
        count = min(per_shard, rows - shard * per_shard)
        picks = rng.choices(range(len(lines)), k=count)
        with open(path, "w") as out:
            out.write("".join(lines[i] + "\n" for i in picks))
        paths.append(path)
    return paths


def tree_rss_mib(pid: int) -> float:
    """Summed RSS (MiB) of `pid` and its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss.get(current, 0)
        todo.extend(children.get(current, []))
    return total / 2**20


def run_variant(index: int, name: str, overrides: dict, config: dict, env: dict, folder: Path) -> dict:
    run_id = f"stream-{index}"
    cfg = json.loads(json.dumps(config))
    cfg["training"].update(overrides)
    path = write_yaml(folder / f"{run_id}.yaml", cfg)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "job", "run", "--config", str(path)], cwd=folder,
                            env={**env, "FINETUNE_RUN_ID": run_id}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_mib(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    wall = time.monotonic() - started
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"{name}: exit {proc.returncode}\n{stderr[-3000:]}")
    metrics = json.loads((folder / "out" / run_id / "metrics.json").read_text())
    steps = cfg["training"]["max_steps"]
    return {"name": name, "wall_s": wall, "peak_mib": peak[0], "s_per_step": metrics["train_runtime"] / steps,
            "wait_s": metrics["train_data_wait_seconds"],
            "wait_share": metrics["train_data_wait_seconds"] / metrics["train_runtime"],
            "accuracy": metrics.get("eval_accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--model", default=str(MODEL))
    opts = parser.parse_args()
    if not Path(opts.model).is_dir():
        sys.exit(f"{opts.model} is not present (../shared)")

    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        folder = Path(tmp)
        (folder / "s3").mkdir()
        (folder / "data").mkdir()
        server, proc = start_s3(folder / "s3", free_s3_port())
        try:
            started = time.monotonic()
            shards = write_shards(folder / "data", opts.rows, opts.shards)
            written = sum(p.stat().st_size for p in shards)
            generated = time.monotonic() - started
            client = server.client()
            client.create_bucket(Bucket="bench")
            started = time.monotonic()
            for path in shards:
                client.upload_file(str(path), "bench", f"stream/{path.name}")
                path.unlink()  # the job reads S3 only
            uploaded = time.monotonic() - started
            rng = random.Random(1)
            held_out = {split: [dict(zip(("text", "label"), sentence(rng))) for _ in range(256)] for split in ("validation", "test")}
            files = {f"{split}_files": str(write_jsonl(folder / "data" / f"{split}.jsonl", rows)) for split, rows in held_out.items()}
            config = {
                "task": "text-classification",
                "model": {"name": opts.model},
                "data": {"train_files": "s3://bench/stream/train-*.jsonl", **files, "streaming": True,
                         "label_names": ["0", "1"], "max_length": 64},
                "output": {"uri": str(folder / "out")},
                "training": {"max_steps": opts.steps, "per_device_train_batch_size": 32, "learning_rate": 5e-5,
                             "logging_steps": 50, "per_device_eval_batch_size": 64},
                "promotion": {"mode": "always"},
            }
            env = base_env(**server.env(), HF_HOME=str(folder / "hf"))
            print(f"bench-streaming: {opts.rows:,} rows in {opts.shards} shards ({written / 2**20:,.0f} MiB; written in "
                  f"{generated:.0f} s, uploaded to the S3 test server in {uploaded:.0f} s), {Path(opts.model).name}, "
                  f"{opts.steps} steps of 32 rows, max_length 64, {os.cpu_count()} CPUs", flush=True)
            rows = []
            for index, (name, overrides) in enumerate(VARIANTS):
                rows.append(run_variant(index, name, overrides, config, env, folder))
                print(f"  done: {name}", flush=True)
        finally:
            stop_s3(proc)

    base = rows[0]
    print()
    print("| DataLoader | wall s | s/step | x first | data wait s | data wait / train time | peak RSS MiB (tree) | validation accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | {row['wall_s']:.1f} | {row['s_per_step']:.3f} | {row['s_per_step'] / base['s_per_step']:.2f}x | "
              f"{row['wait_s']:.1f} | {row['wait_share']:.1%} | {row['peak_mib']:.0f} | {row['accuracy']:.3f} |")
    best = min(rows, key=lambda r: r["s_per_step"])
    print(f"\ngoals: peak RSS < 1024 MiB: {'met' if all(r['peak_mib'] < 1024 for r in rows) else 'missed'} "
          f"(largest {max(r['peak_mib'] for r in rows):.0f}); data wait < 5% of train time: "
          f"{'met' if best['wait_share'] < 0.05 else 'missed'} with {best['name']} ({best['wait_share']:.1%})")


if __name__ == "__main__":
    main()
