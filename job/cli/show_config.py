"""`finetune-job config`: the resolved config, one key per line, with the layer that set each value.

    finetune-job config --config job.yaml --set training.learning_rate=3e-5
"""

from __future__ import annotations

import click

from job.cli.logs import echo
from job.cli.options import config_options, load_config
from job.config import redacted


@click.command("config")
@config_options
@click.option("--yaml", "as_yaml", is_flag=True, help="Print the resolved config as YAML (what config.yaml in a run holds).")
def command(config_path, sets, as_yaml):
    """Print the resolved config and where each value came from (secrets redacted)."""
    cfg = load_config(config_path, sets)
    echo(redacted.dump_yaml(cfg) if as_yaml else redacted.describe_sources(cfg))
