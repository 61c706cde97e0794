"""`finetune-job rollback`: restore the champion the current one replaced.

    finetune-job rollback --output s3://bucket/runs --reason "INC-43: bad predictions"

A rollback is a new generation (the audit log only grows), made with the same compare-and-swap as a
promotion; it refuses a run without `_SUCCESS`. Rolling back twice goes back two champions.
"""

from __future__ import annotations

import click

from job.cli.logs import echo
from job.cli.options import open_output, output_options
from job.retraining import champion, tracking


@click.command("rollback")
@output_options
@click.option("--reason", default=None, help="Why, for the audit log.")
def command(config_path, sets, output_uri, reason):
    """Make the previous champion the champion again."""
    cfg, store = open_output(config_path, sets, output_uri)
    restored = champion.rollback(store, reason)
    tracking.sync_champion(cfg, store)  # MLflow's champion alias moves back too
    echo(champion.pointer_line(restored))
