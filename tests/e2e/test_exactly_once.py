"""Exactly-once data across preemptions: every worker records the ids of the training rows of each
batch it trains on (FINETUNE_ROW_LEDGER, job/training/trainers.py), and what all attempts of a preempted run
trained on, step by step, must be what an undisturbed run trained on: map-style and streamed data,
dataloader workers, two resumes in a row, and a world size that changes 2 -> 1 -> 2 on resume (the
global batch is kept: job/training/checkpoints.py keep_global_batch)."""

from __future__ import annotations

import collections
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import base_env, comparable_metrics, demo_rows, run_cli, tiny_config, write_jsonl, write_yaml
from job.training import checkpoints
from job.errors import ConfigError

ROWS = 192  # an epoch: 24 steps on one worker (8 rows a step), 12 on two


def _config(tmp: Path, output: str, streaming: bool) -> Path:
    cfg = tiny_config(output, data={"max_train_samples": ROWS})
    cfg["training"].update({"num_train_epochs": 2, "logging_steps": 1, "per_device_train_batch_size": 8,
                            "dataloader_num_workers": 2})
    if streaming:
        cfg["data"].update({"streaming": True, "label_names": ["negative", "positive"]})
        cfg["training"]["max_steps"] = 24
    return write_yaml(tmp / "job.yaml", cfg)


def _attempt(args: list[str], env: dict, cwd: Path, stop_at: int | None) -> str:
    """One attempt of the run; SIGTERM once it logs step `stop_at` (None: to the end). Its log."""
    log = cwd / f"attempt-{time.monotonic_ns()}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "job", *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 300
    while stop_at is not None and f"step {stop_at}/" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"never reached step {stop_at}:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    if stop_at is not None:
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=300)
    assert code == (10 if stop_at is not None else 0), log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
    return log.read_text()


def _resumed(log: str) -> int:
    return int(re.search(r"resuming from checkpoint-(\d+) ", log).group(1))


def _steps(ledger: Path) -> dict[int, list]:
    """step -> the sorted ids of every row trained on in it, all workers and attempts together."""
    steps = collections.defaultdict(list)
    for path in ledger.glob("rank-*.jsonl"):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            steps[entry["step"]].extend(entry["ids"])
    return {step: sorted(ids) for step, ids in steps.items()}


def _run(tmp: Path, s3env: dict, output: str, run_id: str, streaming: bool, plan: list[tuple[int, int | None]]):
    """Attempts of one run: (world size, step to stop at). Returns (step -> ids, the attempts' logs)."""
    cfg = _config(tmp, output, streaming)
    ledger = tmp / f"ledger-{run_id}"
    env = {**s3env, "FINETUNE_RUN_ID": run_id, "FINETUNE_ROW_LEDGER": str(ledger)}
    logs = []
    for world, stop_at in plan:
        args = ["run", "--config", str(cfg), "--set", f"distributed.nproc_per_node={world}"]
        logs.append(_attempt(args, env, tmp, stop_at))
        assert f"world size {world}" in logs[-1]
    return _steps(ledger), logs


def _check_exactly_once(steps: dict[int, list], straight: dict[int, list], epochs: int, rows: int, per_epoch: int):
    assert steps == straight  # the same rows in the same steps as the undisturbed run
    assert sorted(steps) == list(range(1, epochs * per_epoch + 1))
    for epoch in range(epochs):
        seen = collections.Counter(i for step in range(epoch * per_epoch + 1, (epoch + 1) * per_epoch + 1) for i in steps[step])
        assert len(seen) == rows and set(seen.values()) == {1}, epoch  # every row once per epoch


@pytest.fixture
def s3env(s3_server):
    return base_env(**s3_server.env())


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True], ids=["map-style", "streaming"])
def test_two_resumes_train_on_every_row_exactly_once(bucket, s3env, tmp_path, streaming):
    output = f"s3://{bucket}/runs"
    straight, _ = _run(tmp_path, s3env, output, "straight", streaming, [(1, None)])
    steps, logs = _run(tmp_path, s3env, output, "twice", streaming, [(1, 5), (1, 15), (1, None)])
    assert 5 <= _resumed(logs[1]) < 15 <= _resumed(logs[2])  # the signal's step, or the one after it
    if streaming:  # a stream's order is its own: every row once per epoch holds for the map-style data
        for log in logs[1:]:  # from the stream's saved position (datasets#8308 lost it after one resume)
            assert re.search(r"resume: the stream goes on from where checkpoint-\d+ left it, not read again", log), log[-2000:]
        assert steps == straight and sorted(steps) == list(range(1, 25))
        assert sorted(i for ids in steps.values() for i in ids) == list(range(ROWS))  # 24 steps of 8: one pass
    else:
        _check_exactly_once(steps, straight, epochs=2, rows=ROWS, per_epoch=ROWS // 8)  # one worker, 8 a step


@pytest.mark.slow
def test_world_size_2_then_1_then_2_keeps_the_global_batch_and_every_row_once(s3_server, bucket, s3env, tmp_path):
    output = f"s3://{bucket}/runs"
    straight, _ = _run(tmp_path, s3env, output, "straight", False, [(2, None)])
    steps, logs = _run(tmp_path, s3env, output, "elastic", False, [(2, 5), (1, 15), (2, None)])
    first, second = _resumed(logs[1]), _resumed(logs[2])
    assert ("resume: world size 1 (was 2): global batch 16 kept as 1 x 8 per device x 2 accumulation "
            f"(was 2 x 8 per device x 1 accumulation); resuming at step {first}, sample {16 * first} of the run") in logs[1]
    assert ("resume: world size 2 (was 1): global batch 16 kept as 2 x 8 per device x 1 accumulation "
            f"(was 1 x 8 per device x 2 accumulation); resuming at step {second}, sample {16 * second} of the run") in logs[2]
    _check_exactly_once(steps, straight, epochs=2, rows=ROWS, per_epoch=ROWS // 16)  # global batch 16
    client = s3_server.client()
    metrics = {run: json.loads(client.get_object(Bucket=bucket, Key=f"runs/{run}/metrics.json")["Body"].read())
               for run in ("straight", "elastic")}
    undisturbed, resized = (comparable_metrics(metrics[run]) for run in ("straight", "elastic"))
    assert resized["epoch"] == undisturbed["epoch"] == 2.0
    # The same rows, dropout masks and loss scale per step on either world size: the same run, up to
    # the order of float additions (Trainer alone doubled the loss of the steps on one worker).
    assert resized.keys() == undisturbed.keys()
    for key, value in undisturbed.items():
        assert resized[key] == (pytest.approx(value, rel=1e-5) if isinstance(value, float) else value), key


@pytest.mark.slow
def test_a_resumed_stream_does_not_read_what_it_trained_on_again(bucket, s3env, tmp_path):
    """A stream of two files; the run is stopped in the second. Then the first file's rows lose their
    text past the first four (which datasets reads for the columns): a resume that read the stream from
    its start to skip (Trainer's way) fails on them, exit 4, as a fresh run does; one from the saved
    position does not read them again, and trains on the rows an undisturbed run did."""
    rows = (demo_rows("train") * 5)[:2000]
    files = [write_jsonl(tmp_path / f"part-{i}.jsonl", rows[i * 1000:(i + 1) * 1000]) for i in (0, 1)]
    # The builtin model learns its vocabulary from the train split, which reads the stream whole: start
    # from a model saved by a one-step run instead, as a pretrained one would be.
    base = tiny_config(str(tmp_path / "base"))
    base["training"].update({"max_steps": 1})
    run_cli("run", "--config", str(write_yaml(tmp_path / "base.yaml", base)), env={**s3env, "FINETUNE_RUN_ID": "base"},
            cwd=tmp_path, check=True)
    cfg = tiny_config(f"s3://{bucket}/runs", model={"name": str(tmp_path / "base" / "base" / "model")})
    cfg["data"] = {"train_files": [str(f) for f in files], "streaming": True, "label_names": ["negative", "positive"],
                   **{f"{split}_files": str(write_jsonl(tmp_path / f"{split}.jsonl", demo_rows(split)))
                      for split in ("validation", "test")}}
    # 1000 rows a file, 32 a step: the stop at step 33 is in the second file. datasets goes back to the
    # start of the tokenizing map's batch of 1000 rows, here the second file's first row.
    cfg["training"].update({"max_steps": 48, "logging_steps": 1, "per_device_train_batch_size": 32})
    path = write_yaml(tmp_path / "two-files.yaml", cfg)
    straight = _ledgered(tmp_path, s3env, path, "whole", [None])
    broken = rows[:4] + [{"text": None, "label": "positive"}] * 996
    steps = _ledgered(tmp_path, s3env, path, "resumed", [33, None], between=lambda: write_jsonl(files[0], broken))
    assert steps == straight
    fresh = run_cli("run", "--config", str(path), env={**s3env, "FINETUNE_RUN_ID": "fresh"}, cwd=tmp_path)
    assert fresh.returncode == 4 and "row 4 (from 0)" in fresh.stderr and "has no text" in fresh.stderr, fresh.stderr[-2000:]


def _ledgered(tmp: Path, s3env: dict, cfg: Path, run_id: str, stops: list, between=lambda: None) -> dict[int, list]:
    """Attempts of one run on one worker, stopped at each step of `stops` (None: to the end), `between()`
    called after the first; step -> the ids of the rows trained on."""
    env = {**s3env, "FINETUNE_RUN_ID": run_id, "FINETUNE_ROW_LEDGER": str(tmp / f"ledger-{run_id}")}
    for n, stop_at in enumerate(stops):
        log = _attempt(["run", "--config", str(cfg)], env, tmp, stop_at)
        if n:
            assert re.search(r"resume: the stream goes on from where checkpoint-\d+ left it", log), log[-2000:]
        else:
            between()
    return _steps(tmp / f"ledger-{run_id}")


@pytest.mark.slow
def test_a_stream_resumed_on_another_world_size_is_exit_3_and_resumes_on_its_own(bucket, s3env, tmp_path):
    """A stream's row order depends on the world size and the DataLoader workers (accelerate hands each
    worker whole files when there are enough, DataLoader workers interleave theirs): resumed on others,
    the rows of the next steps would not be the ones the run had left. One line and exit 3, then the
    run resumes on its own world size."""
    output = f"s3://{bucket}/runs"
    _, logs = _run(tmp_path, s3env, output, "resized", True, [(2, 3)])
    cfg = tmp_path / "job.yaml"
    env = {**s3env, "FINETUNE_RUN_ID": "resized"}
    proc = run_cli("run", "--config", str(cfg), "--set", "distributed.nproc_per_node=1", env=env, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-3000:]
    step = re.search(r"checkpoint-(\d+)", proc.stderr.strip().splitlines()[-1]).group(1)
    assert proc.stderr.strip().splitlines()[-1].endswith(
        f"config error: distributed.nproc_per_node: checkpoint-{step} read a stream on world size 2 with 2 DataLoader "
        "workers each; a stream resumes only as it was read (its row order depends on both): resume on world size 2 "
        "with training.dataloader_num_workers 2"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not re.search(r"step \d+/", proc.stderr)  # nothing trained
    again = _attempt(["run", "--config", str(cfg), "--set", "distributed.nproc_per_node=2"], env, tmp_path, None)
    assert f"resuming from checkpoint-{step} " in again, again[-3000:]


def _args(world: int, per_device: int, accumulation: int) -> SimpleNamespace:
    return SimpleNamespace(world_size=world, per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
                           process_index=0)


@pytest.mark.parametrize("saved, resumed, kept", [
    ((2, 16, 1), (1, 16, 1), (16, 2)),   # half the workers: twice the accumulation
    ((1, 16, 2), (2, 16, 2), (16, 1)),   # twice the workers: half the accumulation
    ((1, 16, 1), (2, 16, 1), (8, 1)),    # ... or half the per-device batch where accumulation is 1
    ((4, 6, 1), (3, 6, 1), (4, 2)),      # 24 rows on 3 workers: 8 each, as 4 x 2
    ((2, 16, 1), (2, 16, 1), (16, 1)),   # same world size: unchanged
])
def test_the_global_batch_is_kept_on_another_world_size(saved, resumed, kept):
    args = _args(*resumed)
    manifest = {"step": 7, **checkpoints.batch_of(_args(*saved))}
    checkpoints.keep_global_batch(args, manifest)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == kept
    assert checkpoints.batch_of(args)["global_batch_size"] == manifest["global_batch_size"]


def test_a_global_batch_the_new_world_size_cannot_keep_is_a_config_error():
    manifest = {"step": 7, **checkpoints.batch_of(_args(2, 8, 1))}
    with pytest.raises(ConfigError) as error:
        checkpoints.keep_global_batch(_args(3, 8, 1), manifest)
    assert error.value.exit_code == 3
    assert str(error.value) == (
        "distributed.nproc_per_node: checkpoint-7 was trained with a global batch of 16 (2 x 8 per device x 1 accumulation); "
        "a world size of 3 cannot keep it (16 is not a multiple of 3): resume on a world size that divides 16")
