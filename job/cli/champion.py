"""`finetune-job champion`: the current champion, as a person or a script reads it.

    finetune-job champion --output s3://bucket/runs
    finetune-job champion --output s3://bucket/runs --json        # the pointer itself, for scripts
    finetune-job champion --output s3://bucket/runs --history     # every promotion, oldest first
"""

from __future__ import annotations

import json

import click

from job.cli.logs import echo
from job.cli.options import open_output, output_options
from job.retraining import champion


@click.command("champion")
@output_options
@click.option("--json", "as_json", is_flag=True, help="Print champion.json as stored (null when there is none).")
@click.option("--history", is_flag=True, help="Also list every promotion from the audit log.")
def command(config_path, sets, output_uri, as_json, history):
    """Show the champion run (checking that its _SUCCESS is there)."""
    _, store = open_output(config_path, sets, output_uri)
    pointer = champion.current(store)
    if as_json:
        echo(json.dumps(pointer, indent=2))
        return
    echo(champion.pointer_line(pointer) if pointer else f"no champion yet in {store.uri}")
    if history:
        echo("history:")
        for r in champion.history(store):
            echo(f"  {r['generation']:>4}  {r['promoted_at']}  {r['run_id']}  {r['metric']} {champion.shown(r['value'])}  {r['by']}: {r['reason']}")
