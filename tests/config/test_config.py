"""Configuration: four layers in one precedence order, strict keys and types, redaction."""

from __future__ import annotations

import pytest

from conftest import base_env, run_cli_here, write_yaml
from job.cli import config_loader
from job.config import redacted
from job.errors import ConfigError


def _file(tmp_path, **sections):
    base = {"data": {"dataset": "builtin:sentiment-demo"}}
    for key, value in sections.items():
        base.setdefault(key, {})
        if isinstance(value, dict):
            base[key].update(value)
        else:
            base[key] = value
    return str(write_yaml(tmp_path / "job.yaml", base))


def test_precedence_defaults_file_env_cli(tmp_path, no_env):
    path = _file(tmp_path, training={"learning_rate": 0.1, "num_train_epochs": 2}, model={"train": "head"})
    no_env.setenv("FINETUNE_TRAINING__LEARNING_RATE", "0.2")
    no_env.setenv("FINETUNE_TRAINING__SEED", "7")
    cfg = config_loader.load(path, ("training.learning_rate=0.3",))
    assert cfg.training["learning_rate"] == 0.3  # --set beats env beats file
    assert cfg.training["num_train_epochs"] == 2  # file beats default
    assert cfg.training["seed"] == 7 and cfg.seed == 7  # env, typed as int
    assert cfg.model.train == "head"
    assert cfg.data.validation_size == 0.1  # default
    assert cfg.sources["training.learning_rate"] == "--set"
    assert cfg.sources["training.seed"] == "env FINETUNE_TRAINING__SEED"
    assert cfg.sources["training.num_train_epochs"] == f"file {path}"
    assert cfg.sources["data.validation_size"] == "default"


def test_env_mapping_keeps_single_underscores_in_key_names(tmp_path, no_env):
    no_env.setenv("FINETUNE_DATA__MAX_TRAIN_SAMPLES", "12")
    no_env.setenv("FINETUNE_RUN_ID", "20240101")  # looks like a number; run_id is a string
    no_env.setenv("FINETUNE_OUTPUT__URI", "s3://bucket/runs")
    cfg = config_loader.load(_file(tmp_path))
    assert cfg.data.max_train_samples == 12
    assert cfg.run_id == "20240101"
    assert cfg.output.uri == "s3://bucket/runs"


def test_task_shorthand_and_list_values(tmp_path, no_env):
    cfg = config_loader.load(_file(tmp_path, task="text-classification"), ("data.label_names=[neg, pos]",))
    assert cfg.task.name == "text-classification"
    assert cfg.data.label_names == ["neg", "pos"]


@pytest.mark.parametrize(
    "sets, where, message",
    [
        (("modle.name=x",), "modle (--set)", "unknown key (did you mean 'model'?)"),
        (("data.txt_column=x",), "data.txt_column (--set)", "did you mean 'data.text_column'?"),
        (("training.learning_rat=0.1",), "training.learning_rat (--set)", "did you mean 'training.learning_rate'?"),
        (("data.max_train_samples=ten",), "data.max_train_samples (--set)", "expected an integer"),
        (("training.num_train_epochs=many",), "training.num_train_epochs (--set)", "expected a number"),
        (("model.trust_remote_code=perhaps",), "model.trust_remote_code (--set)", "expected true/false"),
        (("training.output_dir=/x",), "training.output_dir (--set)", "set output.uri instead"),
        (("novalue",), "--set", "expected key=value"),
        (("task.name=text-clasification",), "task.name", "did you mean 'text-classification'?"),
    ],
)
def test_bad_overrides_are_one_clear_error(tmp_path, no_env, sets, where, message):
    with pytest.raises(ConfigError) as err:
        config_loader.load(_file(tmp_path), sets)
    text = err.value.format_message()
    assert text.startswith(f"config error: {where}"), text
    assert message in text, text
    assert "\n" not in text


def test_streaming_needs_max_steps(tmp_path, no_env):
    with pytest.raises(ConfigError, match="set training.max_steps"):
        config_loader.load(_file(tmp_path, data={"streaming": True}))
    cfg = config_loader.load(_file(tmp_path, data={"streaming": True}, training={"max_steps": 5}))
    assert cfg.data.streaming


def test_secrets_are_redacted_in_describe_and_yaml(tmp_path, no_env):
    cfg = config_loader.load(_file(tmp_path, training={"hub_token": "hf_supersecretvalue123"}))
    assert cfg.training["hub_token"] == "hf_supersecretvalue123"  # the run still gets it
    assert "hf_supersecretvalue123" not in redacted.describe_sources(cfg)
    assert "hf_supersecretvalue123" not in redacted.dump_yaml(cfg)
    assert "training.hub_token" in redacted.describe_sources(cfg) and "***" in redacted.describe_sources(cfg)


def test_config_command_prints_values_and_sources(tmp_path):
    path = _file(tmp_path, training={"num_train_epochs": 3})
    env = base_env(FINETUNE_TRAINING__LEARNING_RATE="0.05")
    proc = run_cli_here("config", "--config", path, "--set", "data.max_length=48", env=env, check=True)
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert lines["training.num_train_epochs"].endswith(f"# file {path}")
    assert lines["training.learning_rate"].endswith("# env FINETUNE_TRAINING__LEARNING_RATE")
    assert "48" in lines["data.max_length"] and lines["data.max_length"].endswith("# --set")
    assert lines["model.train"].endswith("# default")


def test_config_file_from_environment_variable(tmp_path):
    path = _file(tmp_path, data={"max_length": 20})
    proc = run_cli_here("config", env=base_env(FINETUNE_CONFIG=path), check=True)
    assert any(l.startswith("data.max_length") and "20" in l for l in proc.stdout.splitlines())


def test_no_config_means_the_embedded_demo():
    proc = run_cli_here("config", check=True)
    assert "builtin:sentiment-demo" in proc.stdout
    assert "builtin:tiny-bert" in proc.stdout
