"""`finetune-job check`: everything a run needs, verified in seconds and without training.

    finetune-job check --config job.yaml

Checks, in order: the config; a few rows of each split (columns and labels); that the output location
is writable (a probe object is written and deleted); that the model can be resolved.
"""

from __future__ import annotations

import click

from job.cli.logs import echo
from job.cli.options import config_options, load_config
from job.recipes import check


@click.command("check")
@config_options
def command(config_path, sets):
    """Validate config, data, output location and model without training."""
    cfg = load_config(config_path, sets)
    for line in check.preflight(cfg):
        echo(line)
