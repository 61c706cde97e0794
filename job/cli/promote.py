"""`finetune-job promote RUN_ID`: make a finished run the champion by hand.

    finetune-job promote 20261126-030012-a1b2c3 --output s3://bucket/runs --reason "INC-42: new labels"

It goes through the same compare-and-swap as a run (job/retraining/champion.py), bypasses the gate (a person
decided), and refuses a run without `_SUCCESS`. The record names `promotion.metric` from the run's own
metrics.json.
"""

from __future__ import annotations

import re

import click

from job.cli.logs import echo
from job.cli.options import open_output, output_options
from job.retraining import champion, tracking


@click.command("promote")
@click.argument("run_id")
@output_options
@click.option("--reason", default="promoted by hand", show_default=True, help="Why, for the audit log.")
def command(run_id, config_path, sets, output_uri, reason):
    """Make RUN_ID (a finished run) the champion."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run_id):
        raise click.BadParameter("a run id: letters, digits, '.', '_' or '-'", param_hint="RUN_ID")
    cfg, store = open_output(config_path, sets, output_uri)
    moved = champion.promote(store, run_id, cfg.promotion.metric, reason)
    tracking.sync_champion(cfg, store)  # MLflow's champion alias follows (also when it lagged)
    echo(f"run {run_id} is already the champion" if moved is None else champion.pointer_line(moved))
