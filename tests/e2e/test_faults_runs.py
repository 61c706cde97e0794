"""Real runs against storage that fails: the job (a subprocess, real training, real champion scoring)
talks to the S3 server through the fault-injecting proxy (tests/support/faultproxy.py); every check reads the
server directly.

- a failure after `_SUCCESS` (the pointer write) is completed by the rerun;
- SIGTERM ends the job within seconds while it loads data, publishes, or scores the champion;
- a storage fault while reading data is exit 6, never 4;
- random faults of every kind over several runs and promote/rollback commands: every run ends with a
  `_SUCCESS` that verifies, or exits 6 and is finished by its rerun; the promotions log has no gaps;
  metrics.json and the pointer agree. `make soak` runs the long version (FAULT_SOAK=1).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DEMO, base_env, run_cli, run_cli_here, s3_keys, tiny_config, write_yaml
from support.faultproxy import FAULTS, FaultProxy

pytestmark = pytest.mark.slow


@pytest.fixture
def proxy(s3_server):
    host, port = s3_server.endpoint.rsplit("/", 1)[1].split(":")
    with FaultProxy((host, int(port)), seed=int(os.environ.get("FAULT_SEED", "7"))) as proxy:
        yield proxy


@pytest.fixture
def data_bucket(s3_server, bucket) -> str:
    """The bucket, with the demo data under data/ (uploaded directly, not through the proxy)."""
    client = s3_server.client()
    for split in ("train", "validation", "test"):
        client.upload_file(str(DEMO / f"reviews.{split}.jsonl"), bucket, f"data/{split}.jsonl")
    return bucket


def _config(tmp: Path, bucket: str, name: str, epochs: int = 2, **sections) -> str:
    """A tiny run on the demo data in `bucket`; 2 epochs are 30 steps."""
    cfg = tiny_config(f"s3://{bucket}/runs", **{"checkpoint": {"every_steps": 10}, **sections})
    cfg["data"] = {f"{split}_files": f"s3://{bucket}/data/{split}*.jsonl" for split in ("train", "validation", "test")}
    cfg["data"]["max_length"] = 32
    cfg["training"].update(num_train_epochs=epochs, logging_steps=5)
    return str(write_yaml(tmp / f"{name}.yaml", cfg))


def _env(s3_server, proxy, run_id: str | None = None, **extra) -> dict:
    env = base_env(**{**s3_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint}, **extra)
    return {**env, "FINETUNE_RUN_ID": run_id} if run_id else env


def _json(client, bucket: str, key: str):
    return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def _verify(client, bucket: str, run_id: str) -> dict:
    """The run's _SUCCESS manifest, every file checked against the server (size and sha256)."""
    prefix = f"runs/{run_id}"
    manifest = _json(client, bucket, f"{prefix}/_SUCCESS")
    for entry in manifest["files"]:
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/{entry['path']}")["Body"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["size"], entry["sha256"]), (run_id, entry["path"])
    listed = {f"{prefix}/{entry['path']}" for entry in manifest["files"]} | {f"{prefix}/_SUCCESS"}
    assert set(s3_keys(client, bucket, prefix + "/")) == listed, run_id  # no checkpoints, nothing else
    return manifest


def _history(client, bucket: str) -> list[dict]:
    return [_json(client, bucket, key) for key in s3_keys(client, bucket, "runs/promotions/")]


def _check_pointer_log_and_metrics(client, bucket: str) -> None:
    """The promotions log has every generation once; the pointer is its last record; a run that is
    still there says `promote` in metrics.json exactly when its own promotion is in the log."""
    history = _history(client, bucket)
    assert [r["generation"] for r in history] == list(range(1, len(history) + 1))
    if history:
        assert _json(client, bucket, "runs/champion.json") == history[-1]
        _verify(client, bucket, history[-1]["run_id"])
    promoted_by_run = {r["run_id"] for r in history if r["by"] == "run"}
    runs = {key.split("/")[1] for key in s3_keys(client, bucket, "runs/") if key.endswith("/_SUCCESS") and key.count("/") == 2}
    for run_id in runs:
        decision = _json(client, bucket, f"runs/{run_id}/metrics.json")["promotion_decision"]
        assert (decision == "promote") == (run_id in promoted_by_run), (run_id, decision)


# ---------------------------------------------------------------------------------------------- repair


def test_a_failure_after_success_is_completed_by_the_rerun(s3_server, data_bucket, proxy, tmp_path):
    """The pointer write fails until the attempts run out: exit 6 with `_SUCCESS` written and the
    checkpoints left. The rerun (same run id, as Kubernetes retries it) trains nothing, makes the run
    champion, deletes its checkpoints, and exits 0."""
    client, bucket = s3_server.client(), data_bucket
    cfg = _config(tmp_path, bucket, "job", s3={"max_attempts": 2})
    proxy.add("PUT", "/runs/champion.json", "slowdown", times=2)
    first = run_cli("run", "--config", cfg, env=_env(s3_server, proxy, "repaired"), cwd=tmp_path)
    assert first.returncode == 6, first.stderr[-3000:]
    assert f"storage error: s3://{bucket}/runs/champion.json: SlowDown" in first.stderr.strip().splitlines()[-1]
    assert client.head_object(Bucket=bucket, Key="runs/repaired/_SUCCESS")
    assert s3_keys(client, bucket, "runs/repaired/checkpoints/")  # left behind
    assert s3_keys(client, bucket, "runs/promotions/") == []

    rerun = run_cli("run", "--config", cfg, env=_env(s3_server, proxy, "repaired"), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already finished" in rerun.stderr and "step " not in rerun.stderr  # nothing trained again
    assert "champion: generation 1 is run repaired" in rerun.stderr
    _verify(client, bucket, "repaired")  # checkpoints gone
    metrics = _json(client, bucket, "runs/repaired/metrics.json")
    assert metrics["promotion_decision"] == "promote" and metrics["promotion_reason"] == "there is no champion yet"
    pointer = _json(client, bucket, "runs/champion.json")
    assert pointer["run_id"] == "repaired" and pointer["reason"] == "there is no champion yet (written by a rerun)"
    _check_pointer_log_and_metrics(client, bucket)
    again = run_cli("run", "--config", cfg, env=_env(s3_server, proxy, "repaired"), cwd=tmp_path)
    assert again.returncode == 0 and _history(client, bucket) == [pointer]  # idempotent


# ---------------------------------------------------------------------------------------------- SIGTERM


def _terminate_when(args: list[str], env: dict, cwd: Path, ready, wait: float = 2.0) -> tuple[int, float, str]:
    """Start the CLI; `wait` seconds after `ready()` holds, SIGTERM it; return (exit code, seconds from
    SIGTERM to exit, its log)."""
    log = cwd / f"terminated-{time.monotonic_ns()}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "job", *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 300
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"never got there:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    time.sleep(wait)
    assert proc.poll() is None, log.read_text()[-3000:]
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    return code, time.monotonic() - sent, log.read_text()


@pytest.mark.parametrize("stage", ["loading data", "publishing", "scoring the champion"])
def test_sigterm_ends_the_job_within_seconds_wherever_it_is(s3_server, data_bucket, proxy, tmp_path, stage):
    """Each stage is held up by a storage fault that would be retried for 10 minutes; SIGTERM ends the
    job at once, with exit 10 and one line, and nothing taken for finished."""
    client, bucket = s3_server.client(), data_bucket
    cfg = _config(tmp_path, bucket, "job", s3={"retry_seconds": 600, "max_attempts": 1000})
    if stage == "scoring the champion":  # a champion to score: its model is then held up
        run_cli("run", "--config", cfg, env=_env(s3_server, proxy, "champ"), cwd=tmp_path, check=True)
    method, path = {"loading data": (None, f"/{bucket}/data/"), "publishing": ("PUT", "/runs/held/model/"),
                    "scoring the champion": ("GET", "/runs/champ/model/")}[stage]
    proxy.add(method, path, "slowdown", times=10**9)
    ready = lambda: proxy.counts["slowdown"] > 0  # noqa: E731 - the job is stuck where the test wants it
    code, took, log = _terminate_when(["run", "--config", cfg], _env(s3_server, proxy, "held"), tmp_path, ready)
    assert code == 10, log[-3000:]
    assert took < 20, took  # not the 10 minutes the fault would be retried for
    assert log.strip().splitlines()[-1].endswith(
        "interrupted: SIGTERM received; nothing was published without _SUCCESS: run again with the same run id to continue")
    assert "Traceback" not in log
    assert not s3_keys(client, bucket, "runs/held/_SUCCESS")


@pytest.mark.parametrize("when", ["while training", "after _SUCCESS"])
def test_sigterm_while_checkpoints_are_deleted_is_exit_10_at_once(s3_server, data_bucket, proxy, tmp_path, when):
    """Deleting checkpoints is held up by a fault retried for 10 minutes. While training (the older
    checkpoints, after each upload) the SIGTERM checkpoint is saved and the job exits 10 without waiting
    for the deletion; after `_SUCCESS` (the run's own checkpoints) the job exits 10 at once, and the
    rerun, which trains nothing, deletes them."""
    client, bucket = s3_server.client(), data_bucket
    keep = 1 if when == "while training" else 100  # 100: nothing is deleted before _SUCCESS
    cfg = _config(tmp_path, bucket, "job", s3={"retry_seconds": 600, "max_attempts": 1000},
                  checkpoint={"every_steps": 5, "keep": keep}, epochs=20 if when == "while training" else 2)
    # 300 steps while training, not 30: the SIGTERM must land before the last one (30 took 1.3 s)
    proxy.add("DELETE", "/runs/held/checkpoints/", "slowdown", times=10**9)
    ready = lambda: proxy.counts["slowdown"] > 0  # noqa: E731
    code, took, log = _terminate_when(["run", "--config", cfg], _env(s3_server, proxy, "held"), tmp_path, ready, wait=0.5)
    assert code == 10, log[-3000:]
    assert took < 20, took
    assert "Traceback" not in log
    if when == "while training":
        assert re.search(r"interrupted: stopped by SIGTERM at step \d+; its checkpoint is in ", log), log[-3000:]
        assert not s3_keys(client, bucket, "runs/held/_SUCCESS")
        return
    assert client.head_object(Bucket=bucket, Key="runs/held/_SUCCESS")
    assert log.strip().splitlines()[-1].endswith("interrupted: SIGTERM received; nothing was published without _SUCCESS: "
                                                 "run again with the same run id to continue")
    proxy.clear()
    rerun = run_cli_here("run", "--config", cfg, env=_env(s3_server, proxy, "held"), cwd=tmp_path)
    assert rerun.returncode == 0 and "already finished" in rerun.stderr, rerun.stderr[-3000:]
    assert not s3_keys(client, bucket, "runs/held/checkpoints/")


# ---------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("where", ["reading", "listing"])
def test_a_storage_fault_while_reading_data_is_exit_6_never_4(s3_server, data_bucket, proxy, tmp_path, where):
    cfg = _config(tmp_path, data_bucket, "job", s3={"max_attempts": 2, "retry_seconds": 5})
    if where == "reading":
        proxy.add(None, f"/{data_bucket}/data/", "internal", times=10**9)
    else:
        proxy.add("GET", "list-type=2", "slowdown", times=10**9)
    proc = run_cli("run", "--config", cfg, env=_env(s3_server, proxy, "faulty-data"), cwd=tmp_path)
    assert proc.returncode == 6, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "storage error: " in last and ("InternalError" in last or "SlowDown" in last), last
    assert "no file matches" not in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- random faults


SHORT = {"runs": 3, "rates": [0.10], "commands": 6}
SOAK = {"runs": 12, "rates": [0.10, 0.20, 0.30], "commands": 40}
# Runs at 10% get 3 attempts per storage operation, every other run at 20% gets 4: enough that some of
# them fail (exit 6) and have to be finished by their rerun, before or after _SUCCESS.
def _attempts(i: int, rate: float) -> int:
    return 3 if rate <= 0.1 else 4 if rate <= 0.2 and i % 2 else 10


def _rates(total: float) -> dict[str, float]:
    """`total` spread over the kinds of fault; delays are rarer (each costs 2-5 s)."""
    kinds = [f for f in FAULTS if f != "delay"]
    return {**{f: total * 0.9 / len(kinds) for f in kinds}, "delay": total * 0.1}


def _random_faults(s3_server, data_bucket, proxy, tmp_path, plan: dict) -> dict:
    client, bucket = s3_server.client(), data_bucket
    rng = random.Random(plan.get("seed", 5))
    outcomes: dict = {"runs": [], "commands": collections.Counter(), "faults": collections.Counter()}
    for i in range(plan["runs"]):
        rate = plan["rates"][i % len(plan["rates"])]
        proxy.set_rates(_rates(rate))
        run_id = f"run-{i:02d}"
        attempts_allowed = _attempts(i, rate)
        training = {"seed": i, "num_train_epochs": rng.choice([1, 2])}  # winners and losers
        cfg = _config(tmp_path, bucket, run_id, retention={"keep_runs": 3}, training=training, s3={"max_attempts": attempts_allowed})
        attempts = []
        while True:
            started = time.monotonic()
            proc = run_cli_here("run", "--config", cfg, env=_env(s3_server, proxy, run_id), cwd=tmp_path)
            attempts.append((proc.returncode, round(time.monotonic() - started)))
            assert proc.returncode in (0, 6), proc.stderr[-3000:]  # never 4 (data), never 1 (a bug)
            assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
            if proc.returncode == 0:
                break
            assert len(attempts) < 8, attempts
        outcomes["runs"].append({"run": run_id, "rate": rate, "max_attempts": attempts_allowed, "attempts": attempts})
        _verify(client, bucket, run_id)
        _check_pointer_log_and_metrics(client, bucket)

    proxy.set_rates(_rates(plan["rates"][-1]))
    finished = sorted({k.split("/")[1] for k in s3_keys(client, bucket, "runs/") if k.endswith("/_SUCCESS") and k.count("/") == 2})
    for n in range(plan["commands"]):
        args = ("promote", rng.choice(finished)) if n % 2 == 0 else ("rollback",)
        for attempt in range(1, 6):
            proc = run_cli_here(*args, "--output", f"s3://{bucket}/runs", env=_env(s3_server, proxy), cwd=tmp_path)
            assert "Traceback" not in proc.stderr
            # A rollback past the first champion, or to a run retention deleted (only the champion and
            # the one rollback restores are kept), is refused: an answer, not a fault.
            refused = proc.returncode == 6 and ("has no earlier champion" in proc.stderr or "has no _SUCCESS" in proc.stderr)
            if proc.returncode == 0 or refused:
                outcomes["commands"][f"{args[0]}: {'refused' if refused else 'ok'} at attempt {attempt}"] += 1
                break
            assert proc.returncode == 6, proc.stderr[-2000:]
        else:
            pytest.fail(f"{args} still failing after 5 attempts")
    _check_pointer_log_and_metrics(client, bucket)
    outcomes["faults"] = dict(proxy.counts)
    outcomes["requests"] = proxy.requests
    return outcomes


def _report(outcomes: dict, seconds: float) -> str:
    lines = [f"{len(outcomes['runs'])} runs, {sum(outcomes['commands'].values())} promote/rollback commands, "
             f"{outcomes['requests']} requests through the proxy, {seconds:.0f} s"]
    for run in outcomes["runs"]:
        lines.append(f"  {run['run']} at {run['rate']:.0%}, s3.max_attempts {run['max_attempts']}: "
                     + ", ".join(f"exit {c} ({s} s)" for c, s in run["attempts"]))
    lines += [f"  {name}: {count}" for name, count in sorted(outcomes["commands"].items())]
    lines.append("  faults served: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes["faults"].items())))
    return "\n".join(lines)


def test_random_faults_every_run_finishes_verified_and_the_log_has_no_gaps(s3_server, data_bucket, proxy, tmp_path):
    started = time.monotonic()
    outcomes = _random_faults(s3_server, data_bucket, proxy, tmp_path, SHORT)
    print("\n" + _report(outcomes, time.monotonic() - started))
    assert sum(outcomes["faults"].values()) > 10  # the faults really happened


@pytest.mark.skipif(not os.environ.get("FAULT_SOAK"), reason="the long version: make soak (FAULT_SOAK=1)")
def test_soak_random_faults_at_10_to_30_percent(s3_server, data_bucket, proxy, tmp_path):
    started = time.monotonic()
    outcomes = _random_faults(s3_server, data_bucket, proxy, tmp_path, SOAK)
    print("\n" + _report(outcomes, time.monotonic() - started))
    assert all(outcomes["faults"].get(f, 0) > 0 for f in FAULTS), outcomes["faults"]


# ---------------------------------------------------------------------------------------------- workers


def test_when_one_worker_fails_the_job_exits_with_its_code_and_one_line(s3_server, data_bucket, proxy, tmp_path):
    """Rank 0 cannot write the output probe (exit 6) while rank 1 waits for it in a collective, which
    then fails with gloo's "Connection closed by peer": no traceback, the job's exit code is 6, and
    one line names the worker that failed first."""
    cfg = _config(tmp_path, data_bucket, "job", s3={"max_attempts": 2, "retry_seconds": 10})
    proxy.add("PUT", ".finetune-job-probe", "slowdown", times=10**9)
    proc = run_cli("run", "--config", cfg, "--set", "distributed.nproc_per_node=2",
                   env=_env(s3_server, proxy, "one-fails"), cwd=tmp_path)
    assert proc.returncode == 6, proc.stderr[-3000:]
    assert "world size 2" in proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-3000:]
    assert "launch: worker 0 failed first (exit 6: storage error: " in proc.stderr, proc.stderr[-3000:]
    assert "worker 1: stopped, its connection to another worker closed" in proc.stderr or "interrupted" in proc.stderr


def test_a_checkpoint_that_cannot_be_uploaded_does_not_end_the_run(s3_server, data_bucket, proxy, tmp_path):
    """Every write of checkpoint-10 fails past its retries: the run logs it, trains on, uploads the
    next checkpoint, and finishes (exit 0); only the final publish may end a run with exit 6."""
    client, bucket = s3_server.client(), data_bucket
    cfg = _config(tmp_path, bucket, "job", s3={"max_attempts": 2, "retry_seconds": 5})
    proxy.add("PUT", "/runs/ckpt-down/checkpoints/checkpoint-10/", "slowdown", times=10**9)
    proc = run_cli("run", "--config", cfg, "--set", "checkpoint.keep_after_success=true",
                   env=_env(s3_server, proxy, "ckpt-down"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint: checkpoint-10 could not be uploaded (storage error: " in proc.stderr
    assert "training goes on, the next save tries again" in proc.stderr and "Traceback" not in proc.stderr
    complete = [k for k in s3_keys(client, bucket, "runs/ckpt-down/checkpoints/") if k.endswith("/_SUCCESS")]
    assert complete == ["runs/ckpt-down/checkpoints/checkpoint-20/_SUCCESS", "runs/ckpt-down/checkpoints/checkpoint-30/_SUCCESS"]
    assert _json(client, bucket, "runs/ckpt-down/_SUCCESS")["files"]
