"""Preemption as a cluster does it (`make chaos`; not part of `make test`): one run of the job, attempt
after attempt, each a fresh pod, until it finishes, against an undisturbed run of the same config.

    python benchmarks/chaos.py                                   # tiny model, demo data: a few minutes
    python benchmarks/chaos.py --model ../shared/models/all-MiniLM-L6-v2 --rows 768 --sigterm 12 40
    python benchmarks/chaos.py --worlds 2,1,2                    # the world size changes on every attempt

Each attempt: a fresh work dir (no local state: it resumes from storage alone), the next world size
of --worlds, SIGTERM at a random moment --sigterm seconds after its start (Kueue suspending the Job),
and --faults of every storage request failing through tests/support/faultproxy.py in front of a real S3 server
(weed mini). Every worker records the rows it trained on (FINETUNE_ROW_LEDGER). Printed: every attempt
(world size, exit code, step reached, checkpoint resumed from, seconds from SIGTERM to exit: the save
and upload of its checkpoint), the faults served, the steps lost per preemption (steps trained that
the next attempt did not resume from) against the steps since the last save, the rows trained on per
epoch, and metrics and predictions against the undisturbed run's. Exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # conftest's helpers, support/
from conftest import base_env, start_s3, stop_s3, tiny_config, write_yaml  # noqa: E402
from support.faultproxy import FAULTS, FaultProxy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:tiny-bert")
    parser.add_argument("--rows", type=int, default=384, help="training rows (rotten_tomatoes rebuild for a real model)")
    parser.add_argument("--held-out", type=int, default=1066,
                        help="validation and test rows each (a real model; 1066: all of the rebuild's)")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--batch", type=int, default=32, help="the global batch")
    parser.add_argument("--every", type=int, default=4, help="checkpoint.every_steps")
    parser.add_argument("--sigterm", type=float, nargs=2, default=(12.0, 40.0), metavar=("FROM", "TO"))
    parser.add_argument("--faults", type=float, default=0.15, help="share of storage requests that fail")
    parser.add_argument("--worlds", default="1", help="world size of each attempt, cycled: 1 or 2,1,2")
    parser.add_argument("--attempts", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=8433, help="the S3 server's port (and the 5 above it)")
    opts = parser.parse_args()
    worlds = [int(w) for w in opts.worlds.split(",")]
    rng = random.Random(opts.seed)

    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "s3").mkdir()
        server, weed = start_s3(tmp / "s3", opts.port)
        try:
            server.client().create_bucket(Bucket="chaos")
            host, port = server.endpoint.rsplit("/", 1)[1].split(":")
            with FaultProxy((host, int(port)), seed=opts.seed, delay=(0.5, 2.0)) as proxy:
                return _chaos(opts, worlds, rng, tmp, server, proxy)
        finally:
            stop_s3(weed)


def _config(opts, tmp: Path) -> Path:
    cfg = tiny_config("s3://chaos/runs", checkpoint={"every_steps": opts.every, "every_minutes": None},
                      s3={"max_attempts": 10, "retry_seconds": 60}, promotion={"mode": "never"})
    per_device = opts.batch // math.lcm(*[int(w) for w in opts.worlds.split(",")])
    cfg["training"].update({"max_steps": opts.steps, "per_device_train_batch_size": per_device, "logging_steps": 1,
                            "gradient_accumulation_steps": opts.batch // per_device // int(opts.worlds.split(",")[0])})
    cfg["model"]["name"] = opts.model
    if opts.model.startswith("builtin:"):
        cfg["data"]["max_train_samples"] = opts.rows
    else:  # a real model: the rotten_tomatoes rebuild from ../shared, balanced subsets
        from support.rotten_tomatoes import write

        files = write(tmp / "data", {"train": opts.rows, "validation": opts.held_out, "test": opts.held_out})
        cfg["data"] = {f"{split}_files": str(path) for split, path in files.items()} | {"max_length": 64}
        cfg["training"].update({"learning_rate": 5e-5})
    return write_yaml(tmp / "job.yaml", cfg)


def _attempt(cfg: Path, run_id: str, world: int, env: dict, tmp: Path, sigterm_after: float | None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="pod-", dir=tmp))  # a fresh pod: nothing local survives
    log = work / "job.log"
    args = [sys.executable, "-m", "job", "run", "--config", str(cfg), "--set", f"distributed.nproc_per_node={world}"]
    with open(log, "w") as err:
        proc = subprocess.Popen(args, env={**env, "FINETUNE_RUN_ID": run_id, "TMPDIR": str(work)}, cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=err)
    started, sent = time.monotonic(), None
    try:
        proc.wait(timeout=sigterm_after)
    except subprocess.TimeoutExpired:
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=900)
    text = log.read_text()
    steps = [int(s) for s in re.findall(r"step (\d+)/", text)]
    resumed = re.search(r"resuming from checkpoint-(\d+) ", text)
    stopped = re.search(r"stopped by SIGTERM at step (\d+); its checkpoint is in", text)
    return {"world": world, "code": code, "seconds": round(time.monotonic() - started, 1),
            "save_seconds": round(time.monotonic() - sent, 1) if sent and code == 10 and stopped else None,
            "sigterm": sent is not None, "reached": max(steps, default=0),
            "resumed": int(resumed.group(1)) if resumed else 0, "saved": int(stopped.group(1)) if stopped else None,
            "traceback": "Traceback" in text, "tail": text.strip().splitlines()[-40:], "last_line": text.strip().splitlines()[-1][:200] if text.strip() else ""}


def _ledger(folder: Path, cut: dict[int, int]) -> dict[int, list]:
    """step -> ids trained on; an attempt's steps past what the next one resumed from were redone."""
    steps = collections.defaultdict(list)
    for path in folder.glob("rank-*.jsonl"):
        pid = int(path.stem.split("-")[2])
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["step"] <= cut.get(pid, 10**9):
                steps[entry["step"]].extend(entry["ids"])
    return {step: sorted(ids) for step, ids in steps.items()}


def _chaos(opts, worlds, rng, tmp: Path, server, proxy) -> int:
    cfg = _config(opts, tmp)
    env = base_env(**{**server.env(), "AWS_ENDPOINT_URL": proxy.endpoint})
    client = server.client()

    ledger_straight = tmp / "ledger-straight"
    straight = _attempt(cfg, "straight", worlds[0], {**env, "FINETUNE_ROW_LEDGER": str(ledger_straight)}, tmp, None)
    if straight["code"] != 0:
        print(f"undisturbed run failed: {straight['last_line']}")
        return 1
    proxy.set_rates({f: opts.faults * 0.9 / (len(FAULTS) - 1) for f in FAULTS if f != "delay"} | {"delay": opts.faults * 0.1})
    attempts = []
    ledger = tmp / "ledger-chaos"
    before = set()
    pids: list[set] = []
    for n in range(opts.attempts):
        world = worlds[n % len(worlds)]
        result = _attempt(cfg, "chaos", world, {**env, "FINETUNE_ROW_LEDGER": str(ledger)}, tmp, rng.uniform(*opts.sigterm))
        now = {p.name for p in ledger.glob("rank-*.jsonl")} if ledger.exists() else set()
        pids.append({int(name.split("-")[2].split(".")[0]) for name in now - before})
        before = now
        attempts.append(result)
        if result["code"] == 0:
            break
    proxy.set_rates({})
    faults = dict(proxy.counts)

    # Steps lost per preemption: what attempt k trained beyond the checkpoint attempt k+1 resumed from.
    lost, since_save, cut = [], [], {}
    trained_attempts = [k for k, a in enumerate(attempts) if a["reached"] > 0]
    for k, nxt in zip(trained_attempts, trained_attempts[1:]):  # attempts stopped before training lose nothing
        for pid in pids[k]:
            cut[pid] = attempts[nxt]["resumed"]
        lost.append(max(0, attempts[k]["reached"] - attempts[nxt]["resumed"]))
        since_save.append(attempts[k]["reached"] % opts.every if attempts[k]["saved"] is None else 0)
    steps = _ledger(ledger, cut)
    steps_straight = _ledger(ledger_straight, {})
    finished = attempts[-1]["code"] == 0
    trained = sum(max(0, a["reached"] - a["resumed"]) for a in attempts)

    print(f"\nchaos: {opts.model}, {opts.steps} steps of {opts.batch} rows ({opts.rows} training rows), checkpoint every "
          f"{opts.every} steps, SIGTERM {opts.sigterm[0]:g}-{opts.sigterm[1]:g} s into each attempt, {opts.faults:.0%} "
          f"storage faults, world sizes {opts.worlds}")
    print(f"undisturbed: world size {worlds[0]}, {straight['seconds']} s, exit 0")
    print("attempt  world  exit  seconds  resumed from  reached  SIGTERM->exit s  last line")
    for i, a in enumerate(attempts, 1):
        print(f"{i:>7}  {a['world']:>5}  {a['code']:>4}  {a['seconds']:>7}  {a['resumed']:>12}  {a['reached']:>7}  "
              f"{a['save_seconds'] if a['save_seconds'] is not None else '-':>15}  {a['last_line'][:90]}")
    for i, a in enumerate(attempts, 1):
        if a["traceback"] or a["code"] not in (0, 10):  # what went wrong, as the attempt logged it
            print(f"attempt {i}'s log, the end:\n  " + "\n  ".join(a["tail"]))
    print(f"faults served: {sum(faults.values())} of {proxy.requests} requests ("
          + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())) + ")")
    print(f"steps lost per preemption: {lost} (steps since the last save at the SIGTERM: {since_save})")
    print(f"steps trained in all: {trained} for {opts.steps} (x{trained / opts.steps:.2f}); attempts: {len(attempts)}")
    saves = [a["save_seconds"] for a in attempts if a["save_seconds"] is not None]
    if saves:
        print(f"SIGTERM to exit (save + upload): median {sorted(saves)[len(saves) // 2]} s, max {max(saves)} s")

    problems = []
    if not finished:
        problems.append(f"did not finish in {len(attempts)} attempts")
    if any(a["traceback"] for a in attempts):
        problems.append("a traceback in an attempt's log")
    if any(a["code"] not in (0, 10) for a in attempts):
        problems.append("an attempt exited with " + ", ".join(str(a["code"]) for a in attempts if a["code"] not in (0, 10)))
    if finished:
        rows = collections.Counter(i for ids in steps.values() for i in ids)
        rows_straight = collections.Counter(i for ids in steps_straight.values() for i in ids)
        same_rows = steps == steps_straight
        print(f"rows trained on: {'the same rows in the same steps as' if same_rows else 'DIFFERENT from'} the undisturbed "
              f"run ({sum(rows.values())} rows, {len(rows)} distinct; undisturbed {sum(rows_straight.values())}, {len(rows_straight)})")
        if not same_rows:
            problems.append("the rows trained on differ from the undisturbed run's")
        ours = _json(client, "runs/chaos/metrics.json")
        theirs = _json(client, "runs/straight/metrics.json")
        keys = sorted(k for k in theirs if k.startswith(("test_", "eval_")) and isinstance(theirs[k], float)
                      and not k.endswith(("_runtime", "_per_second")))
        worst = max(keys, key=lambda k: abs(ours[k] - theirs[k]))
        rel = abs(ours[worst] - theirs[worst]) / max(abs(theirs[worst]), 1e-12)
        print(f"metrics: largest difference {worst} {ours[worst]:.6f} vs {theirs[worst]:.6f} (relative {rel:.2e}); "
              f"test_accuracy {ours.get('test_accuracy')} vs {theirs.get('test_accuracy')}")
        mine, straight_rows = _predictions(client, "chaos"), _predictions(client, "straight")
        same_predictions = mine == straight_rows
        if same_predictions:
            print("predictions: equal to the undisturbed run's")
        else:
            labels = sum(a.get("predicted") != b.get("predicted") for a, b in zip(mine, straight_rows))
            probability = max((abs(a["probabilities"][k] - b["probabilities"][k]) for a, b in zip(mine, straight_rows)
                               for k in a.get("probabilities", {})), default=0.0)
            print(f"predictions: differ from the undisturbed run's: {labels} of {len(mine)} predicted labels, "
                  f"probabilities by at most {probability:.2e}")
        if len(set(worlds)) == 1 and (rel > 1e-6 or not same_predictions):
            problems.append("metrics or predictions differ from the undisturbed run's")
        scores = [k for k in keys if k.endswith(("accuracy", "precision", "recall", "f1"))]
        if len(set(worlds)) > 1 and scores:
            far = max(scores, key=lambda k: abs(ours[k] - theirs[k]))
            print(f"scores: largest difference {far} {ours[far]:.4f} vs {theirs[far]:.4f} (goal: within 0.01)")
            if abs(ours[far] - theirs[far]) > 0.01 + 1e-9:
                problems.append(f"{far} more than 0.01 from the undisturbed run's")
    print("result: " + ("ok" if not problems else "; ".join(problems)))
    return 0 if not problems else 1


def _json(client, key: str) -> dict:
    return json.loads(client.get_object(Bucket="chaos", Key=key)["Body"].read())


def _predictions(client, run_id: str) -> list[dict]:
    body = client.get_object(Bucket="chaos", Key=f"runs/{run_id}/predictions.jsonl")["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines() if line]


if __name__ == "__main__":
    sys.exit(main())
