"""Data and settings as users of the Hugging Face example scripts write them (fixtures written here, in
the layouts those scripts' own test fixtures use): YAML 1.2 numbers, GLUE-style TSV, nested and
wrapped JSON, CoNLL as .txt, string labels; the embedded demo of every task; per-task champions;
`training:` values that cannot work; a corrupt weights file; no repeated evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import base_env, demo_rows, read_jsonl, run_cli_here, tiny_config, write_jsonl, write_yaml
from job.cli import config_loader
from job.config import redacted
from job.errors import ConfigError

CONFIG, DATA, MODEL = 3, 4, 5


def _one_error_line(proc, code: int, text: str) -> None:
    assert proc.returncode == code, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and text in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("written, value", [("2e-5", 2e-5), ("1e3", 1000.0), (".5", 0.5), ("+1.5E+3", 1500.0), ("3.0e-4", 3e-4)])
def test_numbers_as_users_write_them_in_every_layer(tmp_path, no_env, written, value):
    path = tmp_path / "job.yaml"
    path.write_text(f"data:\n  dataset: builtin:sentiment-demo\ntraining:\n  learning_rate: {written}\n")
    assert config_loader.load(str(path)).training["learning_rate"] == value
    no_env.setenv("FINETUNE_TRAINING__WARMUP_STEPS", written)
    cfg = config_loader.load(str(path), (f"training.adam_epsilon={written}",))
    assert cfg.training["warmup_steps"] == value and cfg.training["adam_epsilon"] == value
    assert config_loader._parse_yaml("-" + written.lstrip("+")) == -value
    assert type(cfg.training["learning_rate"]) is float  # a plain float, as yaml.safe_dump writes it
    import yaml

    assert yaml.safe_load(redacted.dump_yaml(cfg))["training"]["learning_rate"] == value  # config.yaml reads back the same


def test_names_that_look_like_numbers_stay_names(tmp_path, no_env):
    path = tmp_path / "job.yaml"
    path.write_text("model:\n  name: builtin:tiny-bert\n  revision: 7e12345\ndata:\n  dataset: org/data\n  revision: 1.2.3\n  config_name: 1e3\n")
    cfg = config_loader.load(str(path))
    assert (cfg.model.revision, cfg.data.revision, cfg.data.config_name) == ("7e12345", "1.2.3", "1e3")


def test_the_readme_example_override_is_a_number():
    proc = run_cli_here("config", "--set", "training.learning_rate=3e-5", env=base_env(FINETUNE_TRAINING__WEIGHT_DECAY="1e-2"))
    assert proc.returncode == 0, proc.stderr
    assert "training.learning_rate  3e-05  # --set" in proc.stdout.replace("   ", " ").replace("  ", " ") or "3e-05" in proc.stdout
    assert "0.01  # env FINETUNE_TRAINING__WEIGHT_DECAY" in proc.stdout


# ---------------------------------------------------------------------------------------------- the demo


def test_the_demo_stays_out_of_a_config_with_data_of_its_own(tmp_path, no_env):
    mine = write_jsonl(tmp_path / "mine.jsonl", demo_rows("train"))
    cfg = config_loader.load(None, (f"data.train_files={mine}",))
    assert cfg.data.dataset is None and cfg.data.max_length is None  # no 'not both', no demo values
    assert "num_train_epochs" not in cfg.training and "learning_rate" not in cfg.training
    assert cfg.sources["data.train_files"] == "--set" and not any(s.startswith("demo") for s in cfg.sources.values())
    demo = config_loader.load(None, ("training.num_train_epochs=1",))
    assert demo.data.dataset == "builtin:sentiment-demo" and demo.sources["data.dataset"].startswith("demo ")
    assert demo.training["num_train_epochs"] == 1 and demo.sources["training.learning_rate"].startswith("demo ")
    with pytest.raises(ConfigError, match="no training data"):
        config_loader.load(None, ("model.name=bert-base-cased",))  # a model of one's own needs data of one's own


@pytest.mark.parametrize("task, metric", [
    ("text-classification", "test_f1"), ("token-classification", "test_f1"), ("seq2seq", "test_bleu"),
    ("causal-lm", "test_perplexity"), ("masked-lm", "test_perplexity"), ("permutation-lm", "test_perplexity"),
])
def test_every_task_runs_from_the_package_alone(tmp_path, task, metric):
    """`finetune-job run --set task=X` with no config and no ../shared: the task's shipped demo data and
    its builtin model (a few steps here; the demo's own epochs take seconds to a minute)."""
    proc = run_cli_here("run", "--set", f"task={task}", "--set", "training.max_steps=6", "--set", "output.uri=out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next(p.parent for p in (tmp_path / "out").glob("*/_SUCCESS"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert isinstance(metrics[metric], float) and metrics["train_loss"] > 0
    rows = read_jsonl(run / "predictions.jsonl")
    assert len(rows) == 40 or len(rows) == 60  # every test row of the shipped split
    meta = json.loads((run / "model" / "finetune_job.json").read_text())
    assert meta["task"] == task


# ---------------------------------------------------------------------------------------------- files

# MRPC's layout: a header, tabs, and a field that starts with a double quote that closes nowhere.
MRPC = (
    "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    "1\t702876\t702977\tAmrozi accused his brother .\tReferring to him as only \" the witness \" , Amrozi accused his brother .\n"
    "0\t2108705\t2108831\t\"Yucaipa owned Dominick's before selling the chain .\tYucaipa bought Dominick's in 1995 .\n"
    "1\t1330381\t1330521\tThey had published an advertisement .\tOn June 10 , the ship's owners had published an advertisement .\n"
    "0\t3344667\t3344648\tTab came in .\tAnother one left .\n"
    "1\t1\t2\tThe cat sat .\tA cat was sitting .\n"
    "0\t3\t4\tPrices rose .\tThe team won .\n"
)


def test_tsv_is_read_without_quotes_by_run_check_and_predict(tmp_path, no_env):
    from job.data import sources

    tsv = tmp_path / "train.tsv"
    tsv.write_text(MRPC)
    sets = (f"data.train_files={tsv}", "data.text_column=#1 String", "data.text_pair_column=#2 String", "data.label_column=Quality")
    cfg = config_loader.load(None, sets)
    whole = sources.load_file(str(tsv), cfg)  # what predict reads
    assert len(whole) == 6 and whole[1]["#1 String"].startswith('"Yucaipa') and "\t" not in whole[1]["#2 String"]
    cfg = config_loader.load(None, sets + ("data.validation_size=0.2", "data.test_size=0.2"))
    assert sum(len(split) for split in sources.load_splits(cfg).values()) == 6
    assert len(sources.sample_splits(cfg)["train"]) == 6


def test_a_tsv_whose_rows_differ_from_its_lines_is_a_data_error(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text(MRPC + "1\t5\t6\tfoo\rbar\tbaz\n")  # a carriage return inside a field splits the row
    cfg = {**tiny_config(str(tmp_path / "out")), "data": {"train_files": str(tsv), "text_column": "#1 String", "label_column": "Quality"}}
    proc = run_cli_here("run", "--config", str(write_yaml(tmp_path / "job.yaml", cfg)))
    _one_error_line(proc, DATA, "read 8 rows from 7 lines of data")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("_SUCCESS"))


def test_nested_columns_and_wrapped_json(tmp_path, no_env):
    from job.data import sources

    pairs = [{"translation": {"en": f"the cat {i}", "ro": f"pisica {i}"}} for i in range(20)]
    nested = write_jsonl(tmp_path / "wmt.jsonl", pairs)
    cfg = config_loader.load(None, ("task=seq2seq", f"data.train_files={nested}", "data.text_column=translation.en", "data.label_column=translation.ro"))
    splits = sources.load_splits(cfg)
    assert {"translation.en", "translation.ro"} <= set(splits["train"].column_names)
    read = [text for split in splits.values() for text in split["translation.en"]]
    assert sorted(read) == sorted(p["translation"]["en"] for p in pairs)

    wrapped = tmp_path / "squad.json"
    wrapped.write_text(json.dumps({"version": "1.1", "data": [{"text": f"row {i}", "label": i % 2} for i in range(20)]}))
    sets = (f"data.train_files={wrapped}",)
    with pytest.raises(Exception, match="data.field: data"):  # read unwrapped: one row whose column holds the rows
        sources.load_splits(config_loader.load(None, sets))
    cfg = config_loader.load(None, sets + ("data.field=data",))
    assert sum(len(s) for s in sources.load_splits(cfg).values()) == 20
    assert sources.sample_splits(cfg)["train"].column_names[:2] == ["text", "label"]  # check reads what run reads


def test_conll_as_txt_is_hinted_and_conll_columns_follow_the_format(tmp_path, no_env):
    conll = tmp_path / "train.txt"
    conll.write_text("".join(f"EU\tB-ORG\nrejects\tO\nGerman\tB-MISC\ncall{i}\tO\n\n" for i in range(12)))
    proc = run_cli_here("check", "--set", "task=token-classification", "--set", f"data.train_files={conll}", env=base_env())
    _one_error_line(proc, CONFIG, "data.format: conll")
    cfg = config_loader.load(None, ("task=token-classification", f"data.train_files={conll}", "data.format=conll"))
    assert (cfg.data.text_column, cfg.data.label_column) == ("tokens", "tags")
    assert cfg.sources["data.text_column"] == "default for conll data"
    proc = run_cli_here("check", "--set", "task=token-classification", "--set", f"data.train_files={conll}", "--set", "data.format=conll",
                        "--set", f"output.uri={tmp_path / 'out'}", env=base_env())
    assert proc.returncode == 0 and "columns tokens, tags" in proc.stdout, proc.stderr


def test_a_bad_row_is_named_where_it_was_read(tmp_path):
    rows = demo_rows("train")[:30]
    rows[13] = {"text": None, "label": "positive"}
    cfg = {**tiny_config(str(tmp_path / "out")), "data": {"train_files": str(write_jsonl(tmp_path / "train.jsonl", rows)), "max_length": 32}}
    proc = run_cli_here("run", "--config", str(write_yaml(tmp_path / "job.yaml", cfg)))
    _one_error_line(proc, DATA, f"row 13 (from 0) of data.train_files: {tmp_path / 'train.jsonl'} has no text")


def test_predict_takes_runs_column_options(tmp_path):
    pairs = [{"s1": r["text"], "s2": r["text"][::-1], "label": r["label"]} for r in demo_rows("train")[:60]]
    cfg = tiny_config(str(tmp_path / "out"))
    cfg["data"] = {"train_files": str(write_jsonl(tmp_path / "train.jsonl", pairs)), "text_column": "s1", "text_pair_column": "s2", "max_length": 32}
    cfg["training"]["num_train_epochs"] = 1
    run_cli_here("run", "--config", str(write_yaml(tmp_path / "job.yaml", cfg)), check=True)
    model = next((tmp_path / "out").glob("*/model"))
    tsv = tmp_path / "new.tsv"
    tsv.write_text("first\tsecond\n\"quoted start\tplain\nanother one\tand more\n")
    proc = run_cli_here("predict", "--model", str(model), "--input", str(tsv), "--output", str(tmp_path / "p.jsonl"),
                        "--text-column", "first", "--text-pair-column", "second")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_jsonl(tmp_path / "p.jsonl")
    assert [(r["text"], r["text_pair"]) for r in rows] == [('"quoted start', "plain"), ("another one", "and more")]


# ---------------------------------------------------------------------------------------------- task defaults


def test_regression_promotes_on_its_error_and_lower_wins(tmp_path, no_env):
    from job.retraining import promotion

    cfg = config_loader.load(None, ("data.train_files=x.jsonl", "task.problem_type=regression"))
    assert cfg.promotion.metric == "test_rmse" and promotion.lower_is_better("test_rmse")
    assert promotion.judge("auto", "test_rmse", 0.0, 0.4, 0.5, "old")[0]  # 0.4 beats 0.5
    assert config_loader.load(None, ("data.train_files=x.jsonl",)).promotion.metric == "test_f1"


def test_binary_f1_is_on_the_positive_label_you_name(no_env):
    import numpy as np
    from datasets import Dataset, DatasetDict
    from transformers import EvalPrediction

    from job.tasks import text_classification as tc

    split = Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": ["equivalent", "not_equivalent", "equivalent", "equivalent"]})
    splits = DatasetDict(train=split, validation=split, test=split)
    all_equivalent = EvalPrediction(predictions=np.array([[5.0, 0.0]] * 4), label_ids=np.array([0, 1, 0, 0]))

    default = tc.inspect(splits, config_loader.load(None, ("data.train_files=x.jsonl",)))
    assert default.label_names == ["equivalent", "not_equivalent"] and default.positive == 1
    assert tc.compute_metrics(all_equivalent, default)["f1"] == 0.0  # measured on not_equivalent, never predicted
    chosen = tc.inspect(splits, config_loader.load(None, ("data.train_files=x.jsonl", "task.positive_label=equivalent")))
    assert chosen.positive == 0 and tc.compute_metrics(all_equivalent, chosen)["f1"] == pytest.approx(6 / 7)
    with pytest.raises(ConfigError, match="task.positive_label: 'yes' is not one of the labels"):
        tc.inspect(splits, config_loader.load(None, ("data.train_files=x.jsonl", "task.positive_label=yes")))


def test_a_champion_of_another_task_is_kept_unscored(tmp_path, no_env):
    from job import storage
    from job.retraining import champion
    from job.retraining import promotion
    from job.config import S3Config

    store = storage.open_store(str(tmp_path / "runs"), S3Config())
    store.put_bytes(json.dumps({"task": "causal-lm", "task_settings": {}}).encode(), "clm/model/finetune_job.json")
    store.put_bytes(json.dumps({"run_id": "clm", "finished_at": "2026-01-01T00:00:00+00:00", "files": []}).encode(), "clm/_SUCCESS")
    champion.move(store, lambda p: {"run_id": "clm", "metric": "test_perplexity", "value": 9.0, "previous": None, "reason": "first"}, by="run")

    def never(run_id):
        raise AssertionError("a champion of another task must not be scored")

    cfg = config_loader.load(None, ("task=masked-lm", "data.train_files=x.txt"))
    decision = promotion.Gate(cfg, store, "mlm", never).decide({"test_perplexity": 3.0})
    assert not decision.promote and "trained for causal-lm, this run for masked-lm" in decision.reason
    proc = run_cli_here("check", "--set", "task=masked-lm", "--set", f"output.uri={tmp_path / 'runs'}", env=base_env())
    assert proc.returncode == 0 and "champion: run clm, not comparable (it was trained for causal-lm" in proc.stdout, proc.stderr


# ---------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("setting, message", [
    # sizes and counts that must be positive (0 epochs or a learning rate of 0 trains nothing)
    ("training.per_device_train_batch_size=0", "must be greater than 0"),
    ("training.per_device_eval_batch_size=-8", "must be greater than 0"),
    ("training.num_train_epochs=0", "must be greater than 0"),
    ("training.learning_rate=0", "must be greater than 0"),
    ("training.gradient_accumulation_steps=0", "must be greater than 0"),
    ("training.max_steps=0", "must be a positive number of steps"),
    # values below zero or out of their range
    ("training.warmup_steps=-1", "must be at least 0"),
    ("training.weight_decay=-0.1", "must be at least 0"),
    ("training.label_smoothing_factor=1.0", "at least 0 and below 1"),
    ("training.seed=-1", "between 0 and 2**32 - 1"),
    # hardware, packages or network that are not there
    ("training.fp16=true", "fp16 needs a CUDA GPU"),
    ("training.tf32=true", "requires Ampere"),
    ("training.report_to=wandb", "needs the wandb package"),
    ("training.push_to_hub=true", "HF_HUB_OFFLINE"),
    # combinations TrainingArguments refuses when built
    ("training.dataloader_prefetch_factor=2", "dataloader_num_workers > 0"),
    ("training.load_best_model_at_end=true", "save and eval strategy to match"),
])
def test_training_values_that_cannot_work_are_config_errors_at_check(tmp_path, setting, message):
    proc = run_cli_here("check", "--set", setting, "--set", f"output.uri={tmp_path}", env=base_env())
    _one_error_line(proc, CONFIG, f"config error: {setting.split('=')[0]} (--set): ")
    assert message in proc.stderr


def test_max_steps_makes_zero_epochs_irrelevant(no_env):
    cfg = config_loader.load(None, ("training.max_steps=5", "training.num_train_epochs=0"))
    assert cfg.training["max_steps"] == 5


def test_a_corrupt_weights_file_is_a_model_error_naming_it(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "model"
    BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64 + b"not weights")
    for command in ("check", "run"):
        proc = run_cli_here(command, "--config", str(write_yaml(tmp_path / "job.yaml", {
            **tiny_config(str(tmp_path / "out")), "model": {"name": str(folder)}})))
        _one_error_line(proc, MODEL, f"model error: {folder / 'model.safetensors'}: not a readable safetensors weights file")


# ---------------------------------------------------------------------------------------------- evaluation


def test_the_last_epochs_evaluation_is_the_final_one(tmp_path):
    cfg = tiny_config(str(tmp_path / "out"))
    cfg["training"]["num_train_epochs"] = 2
    proc = run_cli_here("run", "--config", str(write_yaml(tmp_path / "job.yaml", cfg)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = next(p.parent for p in (tmp_path / "out").glob("*/_SUCCESS"))
    evaluations = [e for e in json.loads((run / "trainer_state.json").read_text())["log_history"] if "eval_loss" in e]
    assert [e["epoch"] for e in evaluations] == [1.0, 2.0]  # once per epoch, not a third time at the end
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_loss"] == evaluations[-1]["eval_loss"] and metrics["eval_accuracy"] == evaluations[-1]["eval_accuracy"]
    assert "the evaluation at step" in proc.stderr


def test_seq2seq_generates_validation_once_by_default(no_env):
    from job import tasks

    cfg = config_loader.load(None, ("task=seq2seq",))
    assert tasks.get("seq2seq").training_defaults(cfg)["eval_strategy"] == "no"
