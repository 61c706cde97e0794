"""One module per command; `config_options` gives every config-reading command the same options."""

from __future__ import annotations

import click

from job import storage
from job.cli import config_loader, logs
from job.config import redacted


def config_options(command):
    command = click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override one config value (repeatable), e.g. --set training.num_train_epochs=1.",
    )(command)
    return click.option(
        "--config",
        "config_path",
        metavar="PATH",
        envvar="FINETUNE_CONFIG",
        help="YAML config file [env: FINETUNE_CONFIG]. Without one (and no data or model set), the task's embedded demo.",
    )(command)


def load_config(config_path: str | None, sets: tuple[str, ...]):
    """Resolve the config; with no file and no data or model of the user's own, the task's embedded
    demo (shipped data, tiny model) lies under the user's values (job/cli/config_loader.py)."""
    cfg = config_loader.load(config_path or None, sets)
    logs.add_secrets(redacted.secret_values(cfg))
    return cfg


def output_options(command):
    """--config/--set plus --output, for the commands that work on the runs in an output location."""
    command = click.option(
        "--output",
        "output_uri",
        metavar="DIR|s3://...",
        help="The output location (output.uri) holding the runs and champion.json; default: from the config.",
    )(command)
    return config_options(command)


def open_output(config_path: str | None, sets: tuple[str, ...], output_uri: str | None):
    """(config, store) for --output, or the config's output.uri."""
    cfg = load_config(config_path, sets + ((f"output.uri={output_uri}",) if output_uri else ()))
    return cfg, storage.open_store(cfg.output.uri, cfg.s3)
