"""`finetune-job run`: fine-tune, evaluate, predict and publish one run.

    finetune-job run                                    # embedded demo -> ./outputs/<run-id>/
    finetune-job run --config job.yaml --set training.num_train_epochs=1
    finetune-job run --config job.yaml --set distributed.nproc_per_node=2   # two workers
"""

from __future__ import annotations

import sys

import click

from job.cli.logs import echo
from job.cli.options import config_options, load_config
from job.config import env
from job.recipes import run
from job.training import launch


@click.command("run")
@config_options
@click.pass_context
def command(ctx, config_path, sets):
    """Fine-tune the configured model and publish model, predictions and metrics."""
    cfg = load_config(config_path, sets)  # a bad config fails here, before any worker starts
    if not env.inside_launched_worker():
        plan = launch.plan(cfg)
        if plan.world_size > 1:
            cfg.run_id = cfg.run_id or run.new_run_id()  # one id for all workers of this run
            sys.exit(launch.run_workers(plan, sys.argv[1:], cfg.run_id, cfg.distributed.shutdown_grace_seconds))
    result = run.run(cfg, log_format=ctx.obj["log_format"])
    if result.location and env.rank() == 0:
        echo(run.summary(result))
