"""Settings that contradict each other, caught while the config loads, before a weight or a row is
read (torchtune's rule). Each error names the key and the layer that set it."""

from __future__ import annotations

import re

from job.config import dated_paths
from job.config.formats import FILE_FORMATS
from job.config.schema import LORA_PUBLISH, POOLINGS, PROMOTION_MODES, RESERVED, TRAIN_MODES, JobConfig, is_builtin
from job.errors import ConfigError

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # matched whole: "abc\n" is not a run id


def validate(cfg: JobConfig) -> None:
    """Settings that contradict each other, caught before anything is loaded (torchtune's rule)."""

    def where(key: str) -> str:
        return f"{key} ({cfg.sources.get(key, 'default')})"

    if cfg.run_id is not None and not _RUN_ID.fullmatch(cfg.run_id):
        raise ConfigError("use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", where=where("run_id"))
    _validate_transfer(cfg, where)
    report_to = cfg.training.get("report_to")
    if report_to == "mlflow" or (isinstance(report_to, list) and "mlflow" in report_to):
        # Hugging Face's MLflowCallback would start a second MLflow run on every attempt and every worker.
        raise ConfigError("use the tracking: section (tracking.uri or MLFLOW_TRACKING_URI) for MLflow", where=where("training.report_to"))
    data = cfg.data
    if data.dataset is None and data.train_files is None:
        raise ConfigError("no training data: set data.dataset (a Hub id) or data.train_files", where="data")
    if data.dataset is not None and data.train_files is not None:
        raise ConfigError("set data.dataset or data.train_files, not both", where="data")
    if data.format is not None and data.format not in FILE_FORMATS:
        raise ConfigError(f"choose one of {', '.join(FILE_FORMATS)}, got {data.format!r}", where=where("data.format"))
    for key in ("validation_size", "test_size"):
        if not 0 < getattr(data, key) < 1:
            raise ConfigError(f"must be between 0 and 1, got {getattr(data, key)}", where=where(f"data.{key}"))
    for key in ("max_train_samples", "max_eval_samples", "max_predict_samples", "max_length", "num_proc"):
        value = getattr(data, key)
        if value is not None and value < 1:
            raise ConfigError(f"must be at least 1, got {value}", where=where(f"data.{key}"))
    if data.pad_to_max_length and data.max_length is None:
        raise ConfigError("data.pad_to_max_length needs data.max_length", where=where("data.pad_to_max_length"))
    if data.streaming and int(cfg.training.get("max_steps", -1)) <= 0:
        raise ConfigError(
            "a streamed dataset has no length, so set training.max_steps (e.g. --set training.max_steps=1000)",
            where=where("data.streaming"),
        )
    uri = cfg.output.uri
    if "://" in uri and not uri.startswith("s3://"):
        raise ConfigError(f"use a local path or s3://bucket/prefix, got {uri!r}", where=where("output.uri"))
    if uri.startswith("s3://") and not uri[5:].split("/")[0]:
        raise ConfigError("the s3:// URI has no bucket", where=where("output.uri"))
    checkpoint = cfg.checkpoint
    if checkpoint.every_steps is not None and checkpoint.every_steps < 1:
        raise ConfigError(f"must be at least 1, got {checkpoint.every_steps}", where=where("checkpoint.every_steps"))
    if checkpoint.every_minutes is not None and checkpoint.every_minutes <= 0:
        raise ConfigError(f"must be positive (or null to turn off), got {checkpoint.every_minutes}", where=where("checkpoint.every_minutes"))
    if checkpoint.keep < 1:
        raise ConfigError(f"keep at least 1 checkpoint, got {checkpoint.keep}", where=where("checkpoint.keep"))
    if cfg.distributed.nproc_per_node is not None and cfg.distributed.nproc_per_node < 1:
        raise ConfigError(f"must be at least 1, got {cfg.distributed.nproc_per_node}", where=where("distributed.nproc_per_node"))
    for key in ("save_strategy", "save_steps", "save_total_limit", "resume_from_checkpoint"):
        if key in cfg.training:
            raise ConfigError("checkpoints are managed by the job; use the checkpoint: section", where=where(f"training.{key}"))
    if cfg.s3.multipart_chunksize_mb < 5:
        raise ConfigError("S3 parts must be at least 5 MB", where=where("s3.multipart_chunksize_mb"))
    if cfg.s3.max_attempts < 1:
        raise ConfigError(f"must be at least 1, got {cfg.s3.max_attempts}", where=where("s3.max_attempts"))
    if cfg.s3.retry_seconds < 0:
        raise ConfigError(f"must be at least 0, got {cfg.s3.retry_seconds}", where=where("s3.retry_seconds"))
    _validate_scheduling(cfg, where)


def _validate_transfer(cfg: JobConfig, where) -> None:
    """model.train, model.pooling and the lora: section (job/training/head_only.py, job/models/lora.py)."""
    model, lora = cfg.model, cfg.lora
    if model.train not in TRAIN_MODES:
        raise ConfigError(f"choose one of {', '.join(TRAIN_MODES)}, got {model.train!r}", where=where("model.train"))
    if model.pooling not in POOLINGS:
        raise ConfigError(f"choose one of {', '.join(POOLINGS)}, got {model.pooling!r}", where=where("model.pooling"))
    if model.train == "head" and cfg.task.name != "text-classification":
        raise ConfigError(
            f"head-only training reads one pooled vector per row: text-classification only; for {cfg.task.name} "
            "use lora or all", where=where("model.train"),
        )
    if model.train == "head" and cfg.data.streaming:
        raise ConfigError("head-only training computes every row's features up front; it cannot stream the data",
                          where=where("model.train"))
    if lora.r < 1:
        raise ConfigError(f"must be at least 1, got {lora.r}", where=where("lora.r"))
    if lora.alpha <= 0:
        raise ConfigError(f"must be positive, got {lora.alpha}", where=where("lora.alpha"))
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"must be at least 0 and below 1, got {lora.dropout}", where=where("lora.dropout"))
    if lora.target_modules is not None and not lora.target_modules:
        raise ConfigError("name at least one layer, or null for every linear layer", where=where("lora.target_modules"))
    if lora.publish not in LORA_PUBLISH:
        raise ConfigError(f"choose one of {', '.join(LORA_PUBLISH)}, got {lora.publish!r}", where=where("lora.publish"))
    if model.train == "lora" and lora.publish == "adapter" and is_builtin(model.name):
        raise ConfigError(
            f"an adapter is loaded over its base model later, and {model.name} is built from the training data "
            "(it cannot be loaded again); publish merged", where=where("lora.publish"),
        )



def _validate_scheduling(cfg: JobConfig, where) -> None:
    """promotion:, retention:, schedule: and the {date} templates in data paths (job/config/dated_paths.py)."""
    if cfg.run_id in RESERVED:
        raise ConfigError(f"{cfg.run_id!r} is where the champion is kept; choose another run id", where=where("run_id"))
    promotion = cfg.promotion
    if promotion.mode not in PROMOTION_MODES:
        raise ConfigError(f"choose one of {', '.join(PROMOTION_MODES)}, got {promotion.mode!r}", where=where("promotion.mode"))
    if not promotion.metric.startswith(("test_", "eval_")):
        raise ConfigError(
            f"name a test_* or eval_* metric (e.g. test_f1), got {promotion.metric!r}", where=where("promotion.metric")
        )
    delta = promotion.min_delta
    if isinstance(delta, str) and not re.fullmatch(r"\d+(\.\d+)?%", delta.strip()):
        raise ConfigError(f"use a number (0.01) or a percentage ('1%'), got {delta!r}", where=where("promotion.min_delta"))
    if not isinstance(delta, str) and delta < 0:
        raise ConfigError(f"must be at least 0, got {delta}", where=where("promotion.min_delta"))
    if cfg.retention.keep_runs is not None and cfg.retention.keep_runs < 1:
        raise ConfigError(f"keep at least 1 run (or null to keep all), got {cfg.retention.keep_runs}", where=where("retention.keep_runs"))
    if cfg.retention.abandoned_after_hours <= 0:
        raise ConfigError(
            f"must be positive, got {cfg.retention.abandoned_after_hours}", where=where("retention.abandoned_after_hours")
        )
    if cfg.schedule.date is not None:
        dated_paths.parse_date(cfg.schedule.date, where("schedule.date"))
    for split in ("train", "validation", "test"):
        patterns = getattr(cfg.data, f"{split}_files")
        for pattern in [patterns] if isinstance(patterns, str) else patterns or []:
            dated_paths.check_template(pattern, where(f"data.{split}_files"))


