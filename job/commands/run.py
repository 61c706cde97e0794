"""`finetune-job run`: fine-tune, evaluate, predict and publish one run.

    finetune-job run                                    # embedded demo -> ./outputs/<run-id>/
    finetune-job run --config job.yaml --set training.num_train_epochs=1
"""

from __future__ import annotations

import click

from job.commands import config_options, load_config
from job.log import echo


@click.command("run")
@config_options
@click.pass_context
def command(ctx, config_path, sets):
    """Fine-tune the configured model and publish model, predictions and metrics."""
    from job import run

    cfg = load_config(config_path, sets)
    result = run.run(cfg, log_format=ctx.obj["log_format"])
    echo(run.summary(result))
