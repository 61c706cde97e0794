"""The shipped example configs (job/configs/): every one loads, every tiny offline variant runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import job
from conftest import ROOT, SHARED, base_env, run_cli

CONFIGS = sorted((Path(job.__path__[0]) / "configs").glob("*.yaml"))
TINY = [path for path in CONFIGS if "tiny" in path.stem or "stories260k" in path.stem]
# Few rows and one short epoch: whether each runs, not how well (the test_tasks_* files measure that).
SMOKE = ("data.max_train_samples=64", "data.max_eval_samples=16", "data.max_predict_samples=8", "training.num_train_epochs=1")


def test_there_is_a_full_size_and_a_tiny_config_for_every_task():
    from job import tasks

    tasks_of = {path.stem: _task(path) for path in CONFIGS}
    assert set(tasks_of.values()) == set(tasks.TASKS)
    assert {_task(path) for path in TINY} == set(tasks.TASKS)
    assert all(tasks_of[path.stem] in tasks.TASKS for path in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_starts_with_the_command_that_runs_it_and_loads(path):
    comment = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert f"finetune-job run --config job/configs/{path.name}" in comment
    proc = run_cli("config", "--config", str(path), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert re.search(rf'^task\.name +"{_task(path)}"  # file ', proc.stdout, re.M), proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not present")
@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_every_tiny_config_runs(path, tmp_path):
    sets = [a for s in (*SMOKE, f"output.uri={tmp_path}") for a in ("--set", s)]
    proc = run_cli("run", "--config", str(path), *sets, env=base_env(FINETUNE_RUN_ID="smoke"), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "smoke"
    assert (run_dir / "_SUCCESS").is_file()
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == list(range(len(rows))) and rows
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test_loss" in metrics and "eval_loss" in metrics


def _task(path: Path) -> str:
    import yaml

    task = yaml.safe_load(path.read_text())["task"]
    return task if isinstance(task, str) else task["name"]
