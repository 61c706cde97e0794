"""`make bench-seed`: the seed's workload, the job against Hugging Face's own example script, one table.

    python benchmarks/bench_seed.py --reference /tmp/run_classification.py        # every row, full size
    python benchmarks/bench_seed.py --reference ... --train-rows 2000             # a quicker look on a subset
    python benchmarks/bench_seed.py --rows all lora head --repeat 3               # the job's ratios, 3 rounds
    python benchmarks/bench_seed.py                                               # no reference: its rows are skipped

The workload: all-MiniLM-L6-v2 (../shared) on the rotten_tomatoes rebuild (8530/1066/1066 rows), 1 epoch,
batch 32, learning rate 5e-5, max_length 128, seed 42. Rows, each one process, all in this invocation:

- reference, padded: transformers' examples/pytorch/text-classification/run_classification.py, unmodified,
  with its defaults (every row padded to max_seq_length). Its path is `--reference`: the script is not
  shipped with the transformers package and is not part of this repository; without it these rows are
  skipped, never replaced by something else. It needs the `evaluate` package, and its default metric
  (`evaluate.load("accuracy")`) needs the Hub: the benchmark hands it `--metric_name` naming a local
  accuracy module it writes (scikit-learn's accuracy_score), the one input it changes;
- reference, dynamic: the same with `--pad_to_max_length false` (padding per batch);
- job all / lora / head: `finetune-job run`, one per `model.train` mode (benchmarks/bench_transfer.py's configs:
  all and lora 1 epoch, head its own defaults, promotion off), in the job's default precision (bf16 on a
  CPU with bf16 instructions);
- job all, fp32 (`all-fp32`): full fine-tuning with `training.bf16: false`, what bf16 buys.

Wall time is the whole process, start-up and report included; every ratio is against a row of this same
invocation. `--repeat N` runs the job's rows N times, in rounds (each round in another order, so a
minutes-long slow spell on a shared machine does not fall on one row only): a job row's wall is its
median, and a ratio between two job rows is the median of the rounds' own ratios, each round's listed.
The profile table splits each job row into phases from its own log lines (`--log-format json`), each
line timed when it arrives. Start-up compares the job's first log line with
`python -c "from transformers import Trainer"` (the import any Trainer script pays), measured here too.
Accuracy is on the validation split (the reference script predicts test without labels).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the other benchmarks
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # conftest's helpers, support/
from bench_transfer import MODEL, config_for  # noqa: E402
from conftest import base_env, write_yaml  # noqa: E402
from support.rotten_tomatoes import write  # noqa: E402

# Each phase of a job row ends at the first log line (after the previous phase's) that the test accepts.
MILESTONES = [
    ("start-up (imports, config, arguments)", lambda m: m.startswith("run ")),
    ("read data", lambda m: m.startswith("data: ")),
    ("load model", lambda m: m.startswith("model: ") and " loaded" in m),
    ("tokenize", lambda m: m.startswith("model: model.train")),
    ("body feature pass (head)", lambda m: m.startswith("features: ")),
    ("trainer set-up, first step", lambda m: m.startswith("step 1/")),
    ("train (and the epoch's evaluation)", lambda m: m.startswith("step ") and "train_runtime=" in m),
    ("predict test", lambda m: m.startswith("promotion: ")),
    ("report", lambda m: m.startswith("report: ")),
    ("publish", lambda m: m.startswith("published ")),
]
ACCURACY_METRIC = '''import datasets
import evaluate
from sklearn.metrics import accuracy_score

class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="accuracy", citation="", inputs_description="",
                                   features=datasets.Features({"predictions": datasets.Value("int32"),
                                                               "references": datasets.Value("int32")}))

    def _compute(self, predictions, references):
        return {"accuracy": float(accuracy_score(references, predictions))}
'''


def run_timed(command: list[str], env: dict, cwd: Path) -> tuple[float, int, list[tuple[float, str]]]:
    """Run `command`; return (wall seconds, peak RSS MiB, [(seconds since start, stderr line)])."""
    start = time.monotonic()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = [(time.monotonic() - start, line.rstrip("\n")) for line in proc.stderr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed:\n" + "\n".join(line for _, line in lines[-40:]))
    return wall, usage.ru_maxrss // 1024, lines


def import_baseline(env: dict, repeats: int = 3) -> float:
    """Median seconds of `python -c "from transformers import Trainer"`."""
    walls = []
    for _ in range(repeats):
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", "from transformers import Trainer"], env=env, check=True)
        walls.append(time.monotonic() - start)
    return statistics.median(walls)


def job_row(row: str, files: dict, folder: Path, max_length: int, turn: int = 0) -> dict:
    mode, _, precision = row.partition("-")  # all-fp32: full fine-tuning with bf16 off, what bf16 buys
    settings = config_for(mode, files, folder / "out", max_length)
    if precision == "fp32":
        settings["training"]["bf16"] = False
    config = write_yaml(folder / f"{row}.yaml", settings)
    run_id = f"seed-{row}-{turn}"  # each round a run of its own
    env = base_env(FINETUNE_RUN_ID=run_id, HF_HOME=str(folder / f"hf-{row}"))
    wall, rss, lines = run_timed([sys.executable, "-m", "job", "--log-format", "json", "run", "--config", str(config)],
                                 env, folder)
    metrics = json.loads((folder / "out" / run_id / "metrics.json").read_text())
    return {"name": f"job {mode}" + (f", {precision}" if precision else ""), "mode": mode, "wall_s": wall,
            "rss": rss, "accuracy": metrics["eval_accuracy"], "test_accuracy": metrics["test_accuracy"],
            "phases": phases(lines, wall)}


def phases(lines: list[tuple[float, str]], wall: float) -> dict[str, float]:
    """Seconds per phase: from the previous milestone's line to this one's (the first of each)."""
    messages = []
    for at, line in lines:
        try:
            messages.append((at, json.loads(line)["message"]))
        except (ValueError, KeyError, TypeError):
            continue
    found, previous = {}, 0.0
    for name, ends in MILESTONES:
        at = next((t for t, m in messages if t >= previous and ends(m)), None)
        if at is not None:
            found[name], previous = at - previous, at
    found["exit (cleanup)"] = wall - previous
    return found


def reference_row(script: Path, padded: bool, files: dict, folder: Path, max_length: int) -> dict:
    name = "reference, padded" if padded else "reference, dynamic"
    out = folder / ("ref-padded" if padded else "ref-dynamic")
    metric = folder / "accuracy"
    metric.mkdir(exist_ok=True)
    (metric / "accuracy.py").write_text(ACCURACY_METRIC)
    json_files = {}
    for split in ("train", "validation", "test"):  # the script takes .json or .csv names (JSON lines read the same)
        json_files[split] = folder / f"{split}.json"
        json_files[split].write_bytes(Path(files[f"{split}_files"]).read_bytes())
    command = [
        sys.executable, str(script), "--model_name_or_path", str(MODEL),
        "--train_file", str(json_files["train"]), "--validation_file", str(json_files["validation"]),
        "--test_file", str(json_files["test"]), "--text_column_names", "text", "--metric_name", str(metric),
        "--do_train", "--do_eval", "--do_predict", "--max_seq_length", str(max_length),
        "--per_device_train_batch_size", "32", "--learning_rate", "5e-5", "--num_train_epochs", "1",
        "--seed", "42", "--output_dir", str(out), "--report_to", "none",
    ] + ([] if padded else ["--pad_to_max_length", "false"])
    wall, rss, _ = run_timed(command, base_env(HF_HOME=str(folder / f"hf-{out.name}")), folder)
    accuracy = json.loads((out / "eval_results.json").read_text())["eval_accuracy"]
    return {"name": name, "wall_s": wall, "rss": rss, "accuracy": accuracy}


def ratio_of(row: dict, base: dict) -> tuple[float, str]:
    """(row's wall over base's, the rounds' own ratios as text when both ran in the same rounds)."""
    walls, base_walls = row.get("round_walls", []), base.get("round_walls", [])
    if len(walls) > 1 and len(walls) == len(base_walls):
        ratios = [w / b for w, b in zip(walls, base_walls)]
        return statistics.median(ratios), " (median; rounds: " + ", ".join(f"{x:.2f}x" for x in ratios) + ")"
    return row["wall_s"] / base["wall_s"], ""


def median_round(runs: list[dict]) -> dict:
    """One job row from its rounds: the run of median wall (its phases and RSS), with every round's wall."""
    chosen = sorted(runs, key=lambda run: run["wall_s"])[(len(runs) - 1) // 2]
    return {**chosen, "wall_s": statistics.median(run["wall_s"] for run in runs),
            "round_walls": [run["wall_s"] for run in runs]}


def first_line_seconds(row: dict) -> float:
    return row["phases"]["start-up (imports, config, arguments)"]


def print_tables(rows: list[dict], import_s: float, train_rows: int | None) -> None:
    by = {r["name"]: r for r in rows}
    full = by.get("job all")
    print(f"\nfinetune-job seed benchmark: {MODEL.name}, rotten_tomatoes rebuild ({train_rows or 8530} train rows, "
          f"1066 validation, 1066 test), 1 epoch, batch 32, lr 5e-5, max_length 128; CPU x{os.cpu_count()}")
    print("| row | wall s | peak RSS MiB | validation accuracy | ratio | goal | met |")
    print("|---|---|---|---|---|---|---|")
    goals = {  # row -> (baseline row, at most this ratio)
        "job all": [("reference, padded", 0.20), ("reference, dynamic", 0.50)],
        "job lora": [("job all", 0.80)],
        "job head": [("job all", 0.35)],
    }
    for r in rows:
        shown = [(base, limit) for base, limit in goals.get(r["name"], []) if base in by] or [(None, None)]
        for base, limit in shown:
            if base is None:
                print(f"| {r['name']} | {r['wall_s']:.1f} | {r['rss']} | {r['accuracy']:.4f} | - | - | - |")
                continue
            ratio, rounds = ratio_of(r, by[base])
            gap = r["accuracy"] - by[base]["accuracy"]
            print(f"| {r['name']} | {r['wall_s']:.1f} | {r['rss']} | {r['accuracy']:.4f} ({gap:+.4f} vs {base}) | "
                  f"{ratio:.2f}x {base}{rounds} | <= {limit:.2f}x | {'yes' if ratio <= limit else 'no'} |")
    if full:
        first = first_line_seconds(full)
        print(f"| start-up: job's first log line | {first:.2f} | - | - | {first / import_s:.2f}x "
              f"`from transformers import Trainer` ({import_s:.2f} s) | <= 1.20x | {'yes' if first / import_s <= 1.2 else 'no'} |")
    jobs = [r for r in rows if "phases" in r]
    if jobs:
        print("\nprofile: seconds per phase of each job row, from its log lines")
        print("| phase | " + " | ".join(r["name"] for r in jobs) + " |")
        print("|---|" + "---|" * len(jobs))
        names = [name for name, _ in MILESTONES] + ["exit (cleanup)"]
        for name in names:
            if any(name in r["phases"] for r in jobs):
                print(f"| {name} | " + " | ".join(f"{r['phases'][name]:.1f}" if name in r["phases"] else "-" for r in jobs) + " |")
        print("| total (wall) | " + " | ".join(f"{r['wall_s']:.1f}" for r in jobs) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=os.environ.get("HF_RUN_CLASSIFICATION"),
                        help="path to transformers' examples/pytorch/text-classification/run_classification.py "
                             "(or HF_RUN_CLASSIFICATION); its rows are skipped without it")
    rows = ["reference-padded", "reference-dynamic", "all", "all-fp32", "lora", "head"]
    parser.add_argument("--rows", nargs="+", default=rows, choices=rows)
    parser.add_argument("--train-rows", type=int, help="train on this many rows (half of each label); all 8530 when unset")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=1, help="run the job's rows this many times, in rounds")
    args = parser.parse_args()
    if not MODEL.is_dir():
        sys.exit(f"{MODEL} is missing: this benchmark needs ../shared")
    wanted = list(args.rows)
    if any(r.startswith("reference") for r in wanted):
        missing = None
        if not args.reference or not Path(args.reference).is_file():
            missing = f"no reference script at {args.reference}" if args.reference else "no --reference given"
        elif subprocess.run([sys.executable, "-c", "import evaluate"], capture_output=True).returncode != 0:
            missing = "the reference script needs the `evaluate` package (pip install evaluate)"
        if missing:
            print(f"skipping the reference rows: {missing}", file=sys.stderr)
            wanted = [r for r in wanted if not r.startswith("reference")]
    env = base_env()
    os.environ.update(env)

    rows = []
    with tempfile.TemporaryDirectory(prefix="finetune-bench-seed-") as tmp:
        folder = Path(tmp)
        files = {f"{split}_files": str(path) for split, path in write(folder, {"train": args.train_rows}).items()}
        import_s = import_baseline(env)
        print(f"from transformers import Trainer: {import_s:.2f} s", file=sys.stderr)
        for row in [r for r in wanted if r.startswith("reference")]:
            rows.append(reference_row(args.reference, row == "reference-padded", files, folder, args.max_length))
            print(f"{rows[-1]['name']}: {rows[-1]['wall_s']:.1f} s, validation accuracy {rows[-1]['accuracy']:.4f}",
                  file=sys.stderr)
        jobs = [r for r in wanted if not r.startswith("reference")]
        runs = {row: [] for row in jobs}
        for turn in range(args.repeat if jobs else 0):
            shift = turn % len(jobs)  # each round starts at another row
            for row in jobs[shift:] + jobs[:shift]:
                runs[row].append(job_row(row, files, folder, args.max_length, turn))
                print(f"round {turn + 1}, {runs[row][-1]['name']}: {runs[row][-1]['wall_s']:.1f} s, validation "
                      f"accuracy {runs[row][-1]['accuracy']:.4f}", file=sys.stderr)
        rows += [median_round(runs[row]) for row in jobs]
    print_tables(rows, import_s, args.train_rows)
    print("ratios: wall time against the named row of this same invocation (lower is faster).")


if __name__ == "__main__":
    main()
