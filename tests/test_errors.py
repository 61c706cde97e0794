"""The one "first line of an exception" helper, and the documented exit code when a message is empty."""

from __future__ import annotations

import pytest

from job.config import training_args
from job.errors import EXIT_CONFIG, ConfigError, first_line


def test_first_line_of_a_message():
    assert first_line(ValueError("bad value\nsecond line")) == "bad value"
    assert first_line(ValueError("x" * 500)) == "x" * 300
    assert first_line(ValueError("x" * 500), 20) == "x" * 20


def test_an_empty_message_is_named_by_its_class():
    """Five copies of `str(exc).splitlines()[0]` raised IndexError here: exit 1 instead of the error's code."""
    assert first_line(ValueError()) == "ValueError"
    assert first_line(OSError("  \n ")) == "OSError"


def test_an_empty_message_from_a_library_is_still_a_config_error(tmp_path):
    """TrainingArguments refusing a combination with a bare ValueError() ends as exit 3 naming `training`."""

    class Refusing:
        def __init__(self, **_):
            raise ValueError()

    with pytest.raises(ConfigError) as caught:
        training_args.check_values({"learning_rate": 1e-3}, lambda key: f"training.{key}", Refusing)
    assert caught.value.exit_code == EXIT_CONFIG
    assert "ValueError" in caught.value.format_message() and "training" in caught.value.format_message()


def test_an_empty_message_while_building_the_training_arguments_is_exit_3(tmp_path, monkeypatch, no_env):
    """job/training/trainers.py quoted `str(exc).strip().splitlines()[0]`: IndexError (exit 1) on ValueError()."""
    import transformers

    from job import training
    from job.cli import config_loader
    from job.training import trainers

    class Refusing(transformers.TrainingArguments):
        def __post_init__(self):
            raise ValueError()

    cfg = config_loader.load(None, (), use_env=False)
    monkeypatch.setattr(trainers, "_classes", lambda task: (transformers.Trainer, Refusing))
    with pytest.raises(ConfigError) as caught:
        training.arguments(cfg, tmp_path / "trainer", progress_bars=False)
    assert caught.value.exit_code == EXIT_CONFIG
    assert caught.value.format_message().endswith("ValueError")
