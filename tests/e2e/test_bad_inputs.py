"""A corpus of user mistakes. Each must end in one line naming the key or file, its documented exit
code, no traceback, and no run marked finished."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from conftest import DEMO, base_env, demo_rows, run_cli_here, tiny_config, write_jsonl, write_yaml

CONFIG, DATA, MODEL, STORAGE, USAGE = 3, 4, 5, 6, 2


def _files(tmp: Path, train=None, validation=None, test=None, **data) -> dict:
    """A tiny config reading (possibly broken) jsonl files written into tmp."""
    cfg = tiny_config(str(tmp / "out"))
    cfg["data"] = {"max_length": 32, **data}
    for split, rows in (("train", train), ("validation", validation), ("test", test)):
        rows = demo_rows(split) if rows is None else rows
        if rows is not False:
            cfg["data"][f"{split}_files"] = str(write_jsonl(tmp / f"{split}.jsonl", rows))
    return cfg


def _yaml(tmp: Path, cfg: dict | str) -> list[str]:
    path = tmp / "job.yaml"
    if isinstance(cfg, str):
        path.write_text(cfg)
    else:
        write_yaml(path, cfg)
    return ["run", "--config", str(path)]


# Each case: (id, build(tmp) -> (argv, extra env), exit code, text the error line must contain)
Case = tuple[str, Callable[[Path], tuple[list[str], dict]], int, str]


def _demo(tmp: Path, *sets: str, **sections) -> list[str]:
    return _yaml(tmp, tiny_config(str(tmp / "out"), **sections)) + [a for s in sets for a in ("--set", s)]


CASES: list[Case] = [
    # configuration (3)
    ("bad-yaml", lambda t: (_yaml(t, "data:\n  dataset: [unclosed\n"), {}), CONFIG, "invalid YAML at line"),
    ("yaml-not-a-mapping", lambda t: (_yaml(t, "- a\n- b\n"), {}), CONFIG, "top level must be a mapping"),
    ("config-file-missing", lambda t: (["run", "--config", str(t / "nope.yaml")], {}), CONFIG, "nope.yaml: config file not found"),
    ("unknown-section", lambda t: (_yaml(t, "modle:\n  name: x\n"), {}), CONFIG, "did you mean 'model'?"),
    ("unknown-key", lambda t: (_demo(t, "data.txt_column=review"), {}), CONFIG, "did you mean 'data.text_column'?"),
    ("unknown-training-field", lambda t: (_demo(t, "training.num_epochs=3"), {}), CONFIG, "did you mean 'training.num_train_epochs'?"),
    ("wrong-type-file", lambda t: (_yaml(t, {**tiny_config(str(t)), "data": {"dataset": "builtin:sentiment-demo", "max_train_samples": "ten"}}), {}), CONFIG, "data.max_train_samples (file"),
    ("wrong-type-env", lambda t: (_demo(t), {"FINETUNE_TRAINING__NUM_TRAIN_EPOCHS": "many"}), CONFIG, "training.num_train_epochs (env FINETUNE_TRAINING__NUM_TRAIN_EPOCHS): expected a number"),
    ("section-is-a-scalar", lambda t: (_yaml(t, "model: bert-base-cased\n"), {}), CONFIG, "model (file"),
    ("invalid-training-value", lambda t: (_demo(t, "training.lr_scheduler_type=bogus"), {}), CONFIG, "config error: training: "),
    ("managed-training-key", lambda t: (_demo(t, "training.output_dir=/tmp/x"), {}), CONFIG, "set output.uri instead"),
    ("streaming-without-max-steps", lambda t: (_demo(t, "data.streaming=true"), {}), CONFIG, "set training.max_steps"),
    ("dataset-and-files", lambda t: (_demo(t, "data.train_files=x.jsonl"), {}), CONFIG, "not both"),
    ("no-data", lambda t: (_yaml(t, "model:\n  name: builtin:tiny-bert\n"), {}), CONFIG, "no training data"),
    ("bad-train-mode", lambda t: (_demo(t, "model.train=middle"), {}), CONFIG, "model.train (--set): choose one of all, head, lora, got 'middle'"),
    ("bad-run-id", lambda t: (_demo(t), {"FINETUNE_RUN_ID": "../escape"}), CONFIG, "run_id (env FINETUNE_RUN_ID)"),
    ("bad-output-scheme", lambda t: (_demo(t, "output.uri=gs://bucket/runs"), {}), CONFIG, "output.uri (--set): use a local path or s3://"),
    ("set-without-equals", lambda t: (_demo(t, "training.seed"), {}), CONFIG, "--set: expected key=value"),
    ("unknown-task", lambda t: (_demo(t, "task.name=text-clasification"), {}), CONFIG, "did you mean 'text-classification'?"),
    ("unknown-builtin-dataset", lambda t: (_demo(t, "data.dataset=builtin:nope"), {}), CONFIG, "unknown builtin dataset"),
    # data (4)
    ("no-file-matches", lambda t: (_yaml(t, {**tiny_config(str(t / "out")), "data": {"train_files": str(t / "missing-*.jsonl")}}), {}), DATA, "no file matches"),
    ("missing-text-column", lambda t: (_yaml(t, _files(t, text_column="review")), {}), DATA, "data.text_column: column 'review' is not in the train split (columns: text, label"),
    ("missing-label-column", lambda t: (_yaml(t, _files(t, validation=[{"text": "x"}] * 5)), {}), DATA, "data.label_column: the validation split has no labels"),
    ("unknown-label-in-test", lambda t: (_yaml(t, _files(t, test=demo_rows("test") + [{"text": "meh", "label": "neutral"}])), {}), DATA, "label 'neutral' in the test split is not a known label"),
    ("single-label", lambda t: (_yaml(t, _files(t, train=[r for r in demo_rows("train") if r["label"] == "positive"])), {}), DATA, "need at least two labels"),
    ("empty-split", lambda t: (_yaml(t, _files(t, validation=[])), {}), DATA, "validation.jsonl: the validation split is empty"),
    ("corrupt-file", lambda t: ((t / "test.jsonl").write_text("{not json\n") and _yaml(t, _files(t, test=False, test_files=str(t / "test.jsonl"))), {}), DATA, "test.jsonl: cannot read (ArrowInvalid"),
    ("partly-labelled-test", lambda t: (_yaml(t, _files(t, test=demo_rows("test")[:5] + [{"text": "x", "label": None}])), {}), DATA, "some rows of the test split have no label"),
    ("null-text", lambda t: (_yaml(t, _files(t, train=demo_rows("train") + [{"text": None, "label": "positive"}])), {}), DATA, "has no text"),
    ("missing-id-column", lambda t: (_yaml(t, _files(t, id_column="uid")), {}), DATA, "data.id_column: column 'uid' is not in the train split"),
    ("hub-dataset-offline", lambda t: (_demo(t, "data.dataset=rotten_tomatoes"), {}), DATA, "rotten_tomatoes: cannot reach the dataset (HF_HUB_OFFLINE is set)"),
    # model (5)
    ("model-not-found", lambda t: (_demo(t, f"model.name={t}/no-such-model"), {}), MODEL, "model error: model.name:"),
    ("model-dir-without-config", lambda t: ((t / "empty").mkdir() or _demo(t, f"model.name={t / 'empty'}"), {}), MODEL, "model error: model.name:"),
    ("unknown-builtin-model", lambda t: (_demo(t, "model.name=builtin:tiny-gpt9"), {}), CONFIG, "unknown builtin model"),
    ("predict-foreign-model", lambda t: ((t / "m").mkdir() or (t / "m" / "config.json").write_text("{}") and ["predict", "--model", str(t / "m"), "--input", str(DEMO / "reviews.test.jsonl"), "--output", str(t / "o.jsonl")], {}), MODEL, "not a model published by finetune-job"),
    # storage (6)
    ("output-under-a-file", lambda t: ((t / "afile").write_text("x") and _demo(t, f"output.uri={t / 'afile' / 'runs'}"), {}), STORAGE, "storage error:"),
    ("output-in-proc", lambda t: (_demo(t, "output.uri=/proc/finetune-outputs"), {}), STORAGE, "/proc/finetune-outputs"),
    # usage (2)
    ("unknown-option", lambda t: (["run", "--epochs", "3"], {}), USAGE, "No such option '--epochs'"),
    ("predict-missing-option", lambda t: (["predict", "--model", "x"], {}), USAGE, "Missing option '--input'"),
]


@pytest.mark.parametrize("name, build, code, text", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, name, build, code, text):
    args, extra_env = build(tmp_path)
    proc = run_cli_here(*args, env=base_env(**extra_env), cwd=tmp_path)
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    error_lines = [l for l in proc.stderr.splitlines() if "error" in l.lower()]
    assert error_lines, proc.stderr
    assert text in error_lines[-1] if code != USAGE else text in proc.stderr, proc.stderr[-2000:]
    if code != USAGE:
        assert len([l for l in proc.stderr.splitlines() if " ERROR " in l]) == 1  # one line, not a cascade
    assert not list(tmp_path.rglob("_SUCCESS"))


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli_here("--debug", *_demo(tmp_path, "model.train=middle"), cwd=tmp_path)
    assert proc.returncode == CONFIG
    assert "Traceback" in proc.stderr


def test_run_killed_before_success_is_not_finished(tmp_path):
    """A run that fails after training started (here: at publish time) leaves no _SUCCESS."""
    out = tmp_path / "out"
    out.mkdir()
    args = _demo(tmp_path, "training.max_steps=2")
    env = base_env(FINETUNE_RUN_ID="half")
    # Make the run directory unwritable partway: a file where the model directory must go.
    (out / "half").mkdir()
    (out / "half" / "model").write_text("in the way")
    proc = run_cli_here(*args, env=env, cwd=tmp_path)
    assert proc.returncode == 6, proc.stderr
    assert not (out / "half" / "_SUCCESS").exists()
    assert (out / "half" / "config.yaml").exists()  # some files were written, but the run is not done
