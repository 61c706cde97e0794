"""The shipped example configs (job/configs/): every one loads, every tiny offline variant runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import job
from conftest import ROOT, SHARED, base_env, read_jsonl, run_cli, run_cli_here, sha256_of

CONFIGS = sorted((Path(job.__path__[0]) / "configs").glob("*.yaml"))
TINY = [path for path in CONFIGS if "tiny" in path.stem or "stories260k" in path.stem]
# Few rows and one short epoch: whether each runs, not how well (the test_tasks_* files measure that).
SMOKE = ("data.max_train_samples=64", "data.max_eval_samples=16", "data.max_predict_samples=8", "training.num_train_epochs=1")


def test_there_is_a_full_size_and_a_tiny_config_for_every_task():
    from job import tasks

    assert {_task(path) for path in CONFIGS if path not in TINY} == set(tasks.TASKS)
    assert {_task(path) for path in TINY} == set(tasks.TASKS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_starts_with_the_command_that_runs_it_and_loads(path):
    comment = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert f"finetune-job run --config job/configs/{path.name}" in comment
    proc = run_cli_here("config", "--config", str(path), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert re.search(rf'^task\.name +"{_task(path)}"  # file ', proc.stdout, re.M), proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not present")
@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_every_tiny_config_runs_and_repeats_itself_exactly(path, tmp_path):
    """Twice: the same config gives the same weights and predictions (masks, spans and generation
    included), as for text-classification: once in a fresh process, once in this one (which has
    imported and run other things before)."""
    runs = {}
    for run_id, runner in (("a", run_cli), ("b", run_cli_here)):
        sets = [a for s in (*SMOKE, f"output.uri={tmp_path}") for a in ("--set", s)]
        proc = runner("run", "--config", str(path), *sets, env=base_env(FINETUNE_RUN_ID=run_id), cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[run_id] = tmp_path / run_id
        assert (runs[run_id] / "_SUCCESS").is_file()
    rows = read_jsonl(runs["a"] / "predictions.jsonl")
    assert rows and [row["id"] for row in rows] == list(range(len(rows)))
    metrics = json.loads((runs["a"] / "metrics.json").read_text())
    assert "test_loss" in metrics and "eval_loss" in metrics
    for name in ("model/model.safetensors", "predictions.jsonl"):
        assert sha256_of(runs["a"] / name) == sha256_of(runs["b"] / name), name
    # Run b's promotion gate scored run a's model (the champion by then) on b's rows with the task's
    # own evaluation (generation, perplexity...): the same weights and rows, so a's own score.
    second = json.loads((runs["b"] / "metrics.json").read_text())
    assert second["promotion_champion_run"] == "a", second["promotion_reason"]
    assert second["promotion_champion"] == pytest.approx(metrics[second["promotion_metric"]], rel=1e-6)



def _task(path: Path) -> str:
    import yaml

    task = yaml.safe_load(path.read_text())["task"]
    return task if isinstance(task, str) else task["name"]
