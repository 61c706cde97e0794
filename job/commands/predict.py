"""`finetune-job predict`: batch inference with a model a run published.

    finetune-job predict --model outputs/<run-id>/model --input new.jsonl --output predictions.jsonl
    finetune-job predict --model s3://bucket/runs/<run-id>/model --input s3://bucket/in.csv --output s3://bucket/out.jsonl
"""

from __future__ import annotations

import click

from job.log import echo


@click.command("predict")
@click.option("--model", "model_uri", required=True, metavar="DIR|s3://...", help="A published run's model/ directory.")
@click.option("--input", "input_uri", required=True, metavar="FILE|s3://...", help="csv, json/jsonl or parquet rows.")
@click.option("--output", "output_uri", required=True, metavar="FILE|s3://...", help="Where predictions.jsonl goes.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--text-column", default=None, help="Input column, if it differs from the one the model was trained on.")
@click.option(
    "--trust-remote-code", is_flag=True,
    help="Run model code shipped with --model (a model trained from one that needs it). Off unless you trust it.",
)
def command(model_uri, input_uri, output_uri, batch_size, text_column, trust_remote_code):
    """Predict labels for every row of an input file with a trained model."""
    from job import predict

    count = predict.predict(
        model_uri, input_uri, output_uri, batch_size=batch_size, text_column=text_column, trust_remote_code=trust_remote_code
    )
    echo(f"{count} predictions written to {output_uri}")
