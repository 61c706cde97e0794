"""What a config *is*: the sections as dataclasses, their allowed values, and plain-data views.

The ground floor of the job (everything reads a JobConfig). How a config is *read* (the four layers,
merging, typing, the demo layer) is the CLI's: job/cli/config_loader.py. The `training:` section is
passed through to `transformers.TrainingArguments` (checked in job/config/training_args.py); the `task:`
section holds the task's name plus the settings its module declares (see job/tasks/).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

BUILTIN_PREFIX = "builtin:"


def _setting(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class ModelConfig:
    name: str = _setting("builtin:tiny-bert", "Hub id, local directory, s3:// prefix, or builtin:tiny-bert.")
    revision: str | None = _setting(None, "Hub revision (branch, tag or commit) of the model.")
    trust_remote_code: bool = _setting(False, "Run model code shipped with a Hub model. Off unless you trust it.")
    train: str = _setting(
        "all", "all: fine-tune every layer; head: train only a new head on the frozen body's features (transfer "
        "learning); lora: low-rank adapters on the frozen body, the task head in full (the lora: section).",
    )
    pooling: str = _setting(
        "mean", "model.train head: the vector the head reads: mean (of the token vectors; what sentence-embedding "
        "models such as all-MiniLM-L6-v2 give) or cls (the first token's, as classic BERT's classifier).",
    )
    attn_implementation: str | None = _setting(
        None, "Attention kernel: sdpa, eager, flash_attention_2, flash_attention_3, flex_attention or a Hub kernel; "
        "transformers' default (sdpa where the model has it) when unset.",
    )


@dataclass
class DataConfig:
    dataset: str | None = _setting(None, "Hub dataset id, or a shipped demo (builtin:sentiment-demo, builtin:ner-demo, builtin:translation-demo, builtin:stories-demo). Or use the *_files keys.")
    config_name: str | None = _setting(None, "Hub dataset configuration name.")
    revision: str | None = _setting(None, "Hub dataset revision (branch, tag or commit).")
    train_files: str | list[str] | None = _setting(None, "Local path, glob or s3:// URI (or a list of them).")
    validation_files: str | list[str] | None = _setting(None, "As train_files; carved from train when absent.")
    test_files: str | list[str] | None = _setting(None, "As train_files; carved from train when absent.")
    format: str | None = _setting(None, "csv, tsv, json, parquet, text (a row per line) or conll; inferred from the file extension when unset.")
    field: str | None = _setting(None, "JSON files: the key whose list holds the rows (`{\"version\": ..., \"data\": [...]}`: data).")
    text_column: str = _setting("text", "Input column ('tokens' for CoNLL files); a dotted name (translation.en) reaches into a nested field.")
    text_pair_column: str | None = _setting(None, "Second input column for sentence-pair tasks.")
    label_column: str = _setting("label", "Label (or target) column ('tags' for CoNLL files).")
    id_column: str | None = _setting(None, "Column that identifies a row in predictions; the row number when unset.")
    label_names: list[str] | None = _setting(None, "Fixes the label set and its order (integer labels are ids into it); inferred when unset.")
    validation_size: float = _setting(0.1, "Share of train carved as validation when there is no validation split.")
    test_size: float = _setting(0.1, "Share of train carved as test when there is no test split.")
    max_train_samples: int | None = _setting(None, "Keep only the first N training rows (smoke runs).")
    max_eval_samples: int | None = _setting(None, "Keep only the first N validation rows.")
    max_predict_samples: int | None = _setting(None, "Keep only the first N test rows.")
    max_length: int | None = _setting(None, "Truncate inputs to N tokens (default: the tokenizer's limit, at most 512).")
    pad_to_max_length: bool = _setting(False, "Pad every batch to max_length (slower; for static-shape hardware).")
    streaming: bool = _setting(False, "Stream the training split as an IterableDataset (needs training.max_steps).")
    num_proc: int | None = _setting(None, "Worker processes for tokenization (map-style datasets only).")


@dataclass
class OutputConfig:
    uri: str = _setting("./outputs", "Local directory or s3://bucket/prefix; each run writes <uri>/<run-id>/.")
    work_dir: str | None = _setting(None, "Local scratch for checkpoints and staging (default: $TMPDIR/finetune-job).")


@dataclass
class S3Config:
    endpoint_url: str | None = _setting(None, "S3-compatible endpoint; AWS_ENDPOINT_URL is used when unset.")
    region: str | None = _setting(None, "Region; the AWS configuration chain decides when unset.")
    max_attempts: int = _setting(10, "Attempts per storage operation (a request with its reply's body, a listing, a file).")
    retry_seconds: float = _setting(120.0, "How long one storage operation may keep retrying before the job gives up (exit 6).")
    multipart_threshold_mb: int = _setting(64, "Files larger than this upload in parts.")
    multipart_chunksize_mb: int = _setting(16, "Size of each uploaded part (at least 5).")


@dataclass
class CheckpointConfig:
    every_steps: int | None = _setting(None, "Save and upload a checkpoint every N optimizer steps.")
    every_minutes: float | None = _setting(30.0, "Also save one when this many minutes passed since the last (null: off).")
    keep: int = _setting(2, "Complete checkpoints kept in storage; older ones are deleted.")
    keep_after_success: bool = _setting(False, "Keep the run's checkpoints once it has finished.")


@dataclass
class DistributedConfig:
    nproc_per_node: int | None = _setting(None, "Workers on this node; default: one per visible GPU, else 1.")
    shutdown_grace_seconds: int = _setting(240, "After SIGTERM, how long workers may take to checkpoint before being killed.")


@dataclass
class PromotionConfig:
    mode: str = _setting("auto", "auto: promote when the run beats the champion; never; always.")
    metric: str = _setting(
        "test_f1",
        "test_* or eval_* metric both models are scored on (default: the task's: test_f1, test_bleu or "
        "test_perplexity); *loss and *perplexity are better when lower.",
    )
    min_delta: float | str = _setting(0.0, "Least improvement that promotes: absolute (0.01) or relative ('1%').")


@dataclass
class RetentionConfig:
    keep_runs: int | None = _setting(None, "Keep the N newest finished runs (plus the champion); null keeps every run.")
    abandoned_after_hours: float = _setting(48.0, "An unfinished run untouched this long is abandoned and may be deleted.")


@dataclass
class ScheduleConfig:
    date: str | None = _setting(None, "YYYY-MM-DD that {date} in data paths stands for; today (UTC) when unset.")


@dataclass
class LoraConfig:
    r: int = _setting(8, "Rank of each adapter (model.train: lora).")
    alpha: float = _setting(16.0, "Scaling: the adapter's update is multiplied by alpha / r.")
    dropout: float = _setting(0.0, "Dropout on the adapter's input (0: none, and no copy of every layer's input).")
    body_dropout: bool = _setting(
        False, "Keep the frozen body's dropout on its hidden states (false: off, as it bought no accuracy and cost "
        "13% of LoRA's training time; dropout inside attention stays).",
    )
    target_modules: list[str] | None = _setting(
        None, "Names of the layers that get adapters (e.g. [query, value]); every linear layer but the output "
        "layer and the task head when unset.",
    )
    publish: str = _setting("merged", "merged: an ordinary model, adapters folded in; adapter: only the adapters "
                            "and the task head, loaded over model.name (which must stay loadable).")


@dataclass
class TrackingConfig:
    uri: str | None = _setting(
        None, "MLflow tracking server (http://mlflow:5000): params, metrics per step and the champion as a "
        "registered model version; default: $MLFLOW_TRACKING_URI; neither: no tracking (docs/tracking.md).",
    )
    experiment: str = _setting("finetune-job", "MLflow experiment the runs go to ($MLFLOW_EXPERIMENT_NAME wins).")
    model_name: str | None = _setting(None, "Registered model whose `champion` alias follows champion.json; default finetune-job-<task>.")


@dataclass
class TaskConfig:
    name: str = _setting("text-classification", "The kind of fine-tuning: a name in job/tasks/ TASKS (docs/tasks.md).")
    settings: Any = None  # the task module's own Settings dataclass, filled in by load()


@dataclass
class JobConfig:
    run_id: str | None = _setting(None, "Names <output.uri>/<run-id>/; generated when unset.")
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    s3: S3Config = field(default_factory=S3Config)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    training: dict[str, Any] = field(default_factory=dict)
    # dotted key -> where its value came from ("default", "file x.yaml", "env FINETUNE_X", "--set")
    sources: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def seed(self) -> int:
        """One seed for everything (data carving, init, sampling): TrainingArguments' own."""
        return int(self.training.get("seed", 42))


# Sections whose keys are declared by a dataclass; `training` and the task settings are checked elsewhere.
SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "output": OutputConfig,
    "s3": S3Config,
    "checkpoint": CheckpointConfig,
    "distributed": DistributedConfig,
    "promotion": PromotionConfig,
    "retention": RetentionConfig,
    "schedule": ScheduleConfig,
    "lora": LoraConfig,
    "tracking": TrackingConfig,
}
TOP_LEVEL = ("run_id", "task", *SECTIONS, "training")

TRAIN_MODES = ("all", "head", "lora")
POOLINGS = ("mean", "cls")
LORA_PUBLISH = ("merged", "adapter")
PROMOTION_MODES = ("auto", "never", "always")

# Names in the output root that are not runs (job/retraining/champion.py keeps the champion there).
CHAMPION_POINTER = "champion.json"
PROMOTIONS_FOLDER = "promotions"
RESERVED = (CHAMPION_POINTER, PROMOTIONS_FOLDER)


def to_dict(cfg: JobConfig) -> dict[str, Any]:
    """The resolved config as plain nested data (what config.yaml holds), without redaction."""
    out: dict[str, Any] = {"run_id": cfg.run_id}
    task_settings = dataclasses.asdict(cfg.task.settings) if dataclasses.is_dataclass(cfg.task.settings) else {}
    out["task"] = {"name": cfg.task.name, **task_settings}
    for name in SECTIONS:
        out[name] = dataclasses.asdict(getattr(cfg, name))
    out["training"] = dict(cfg.training)
    return out


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and prefix == "":
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat




def is_builtin(name: str | None) -> bool:
    return bool(name) and name.startswith(BUILTIN_PREFIX)
