"""`finetune-job predict`: batch inference with a model a run published.

    finetune-job predict --model outputs/<run-id>/model --input new.jsonl --output predictions.jsonl
    finetune-job predict --model s3://bucket/runs/<run-id>/model --input s3://bucket/in.csv --output s3://bucket/out.jsonl
"""

from __future__ import annotations

import click

from job.cli.logs import echo
from job.recipes import predict


@click.command("predict")
@click.option("--model", "model_uri", required=True, metavar="DIR|s3://...", help="A published run's model/ directory.")
@click.option("--input", "input_uri", required=True, metavar="FILE|s3://...", help="csv, tsv, json/jsonl, parquet, text or CoNLL rows.")
@click.option("--output", "output_uri", required=True, metavar="FILE|s3://...", help="Where predictions.jsonl goes.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
# The input is read like run's data (job/data/); each option defaults to what the model was trained with.
@click.option("--text-column", default=None, help="Input column (data.text_column); dotted names reach nested fields.")
@click.option("--text-pair-column", default=None, help="Second input column of sentence-pair models (data.text_pair_column).")
@click.option("--label-column", default=None, help="Gold label column, copied to the output when present (data.label_column).")
@click.option("--id-column", default=None, help="Column that identifies a row (data.id_column); the row number when unset.")
@click.option("--format", "file_format", default=None, help="csv, tsv, json, parquet, text or conll (data.format); from the file name when unset.")
@click.option("--field", default=None, help="JSON: the key whose list holds the rows (data.field).")
@click.option(
    "--trust-remote-code", is_flag=True,
    help="Run model code shipped with --model (a model trained from one that needs it). Off unless you trust it.",
)
def command(model_uri, input_uri, output_uri, batch_size, text_column, text_pair_column, label_column, id_column, file_format, field,
            trust_remote_code):
    """Predict labels for every row of an input file with a trained model."""
    columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column,
               "id_column": id_column, "format": file_format, "field": field}
    count = predict.predict(
        model_uri, input_uri, output_uri, batch_size=batch_size, data_options=columns, trust_remote_code=trust_remote_code
    )
    echo(f"{count} predictions written to {output_uri}")
