"""Batch inference with a published model: rows in, predictions.jsonl out.

The model directory carries `finetune_job.json` (written by the run), which says the task and the
columns the model was trained on, so the input is read and tokenized exactly as in training, and
whether it ran in bf16, which prediction keeps (so it predicts what the run predicted). Gold
labels are copied to the output when the input has them. Code shipped with the model runs only with
`--trust-remote-code`: a run's `model.trust_remote_code` says nothing about who wrote the bucket since.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from job import models, storage, tasks, training
from job.config import DataConfig, JobConfig, TaskConfig
from job.data import sources
from job.errors import ModelError, first_line

log = logging.getLogger(__name__)


def predict(
    model_uri: str, input_uri: str, output_uri: str, *, batch_size: int, data_options: dict | None = None, trust_remote_code: bool = False
) -> int:
    """`data_options`: data.* settings for reading the input (columns, format, field); each one left
    None is what the model was trained with. `trust_remote_code` only for the model named here."""

    training.quiet_libraries(progress_bars=False)
    with tempfile.TemporaryDirectory(prefix="finetune-predict-") as tmp:
        work = Path(tmp)
        model_dir = _local_model(model_uri, work)
        meta = _read_meta(model_dir, model_uri)
        task = tasks.get(meta["task"])
        cfg = JobConfig(
            task=TaskConfig(name=meta["task"], settings=task.Settings(**meta.get("task_settings", {}))),
            data=_input_settings(input_uri, meta, data_options or {}),
        )
        rows = sources.load_file(input_uri, cfg)
        tokenizer, model = _load(model_dir, task, model_uri, work, trust_remote_code)
        spec = task.spec_from_model(model.config, cfg, rows)
        features, collator = training.prepare(cfg, task, spec, tokenizer, {"test": rows})
        predictor = training.predictor(cfg, model, tokenizer, collator, batch_size, work / "trainer",
                                       bf16=meta.get("bf16"))
        predicted = predictor.predict(features["test"], metric_key_prefix="predict")
        out_path = work / "predictions.jsonl"
        count = 0
        with open(out_path, "w", encoding="utf-8") as out:
            for row in task.prediction_rows(rows, predicted, spec):
                out.write(storage.json_line(row))
                count += 1
        _write_output(out_path, output_uri)
    log.info("predict: %d rows -> %s", count, output_uri)
    return count


def _local_model(uri: str, work: Path) -> Path:
    if uri.startswith("s3://"):
        return models.download(uri, JobConfig(), work)
    path = Path(uri)
    if not (path / "config.json").is_file():
        raise ModelError("not a saved model directory (no config.json)", where=uri)
    return path


def _input_settings(input_uri: str, meta: dict, options: dict) -> DataConfig:
    """How to read the input: the options given, else the columns the model was trained on
    (finetune_job.json). Format, field and id column describe the input file itself, so they come
    from the options (or the file name) only."""
    settings = DataConfig(train_files=input_uri, max_length=meta.get("max_length"))
    for key in ("text_column", "text_pair_column", "label_column"):
        value = options.get(key) if options.get(key) is not None else meta.get(key)
        if value is not None:
            setattr(settings, key, value)
    settings.id_column, settings.format, settings.field = options.get("id_column"), options.get("format"), options.get("field")
    return settings


def _read_meta(model_dir: Path, uri: str) -> dict:
    try:
        return json.loads((model_dir / models.META_FILE).read_text())
    except FileNotFoundError:
        raise ModelError(f"no {models.META_FILE}: not a model published by finetune-job", where=uri) from None


def _load(model_dir: Path, task, uri: str, work: Path, trust_remote_code: bool):
    try:
        return models.load_published(model_dir, task, work, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(first_line(exc), where=uri) from exc


def _write_output(path: Path, uri: str) -> None:
    parent, _, name = uri.rstrip("/").rpartition("/")
    store = storage.open_store(parent or ".", JobConfig().s3)
    store.put_file(path, name)
