"""Values of the `training:` pass-through that TrainingArguments accepts but that fail later or do nothing.

config.py checks the names and types of `training:` against TrainingArguments itself; this module
checks the values, while the config loads (so at `finetune-job check` and before any worker starts):

- sizes and counts that must be positive (a batch of 0 rows, 0 epochs or a learning rate of 0 would
  publish a run that trained nothing; a negative one fails partway through);
- values with a range (dropout-like factors, betas, seeds);
- options that need hardware or packages this machine lacks (fp16 without a GPU, a `report_to`
  integration that is not installed, `push_to_hub` with the Hub off);
- combinations TrainingArguments itself refuses when it is built (`load_best_model_at_end` with the
  job's checkpointing, `dataloader_prefetch_factor` without workers, unknown optimizer names): it is
  built here once with the values given, and its first complaint is the error.

Every failure is one ConfigError naming the key (exit 3).
"""

from __future__ import annotations

import importlib.util
import math
import tempfile
from typing import Any, Callable

from job.config import env
from job.errors import ConfigError, first_line

# key -> (test, what the value must be). Unset (None) values are left to TrainingArguments' defaults.
_POSITIVE = (
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "eval_accumulation_steps", "learning_rate", "num_train_epochs", "eval_steps", "logging_steps",
    "adam_epsilon", "dataloader_prefetch_factor",
)
_NON_NEGATIVE = ("weight_decay", "max_grad_norm", "dataloader_num_workers", "eval_delay", "warmup_steps")
_BELOW_ONE = ("label_smoothing_factor", "adam_beta1", "adam_beta2")  # in [0, 1)
# report_to names -> the package that integration imports
_INTEGRATIONS = {
    "wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow", "comet_ml": "comet_ml", "neptune": "neptune",
    "clearml": "clearml", "dvclive": "dvclive", "codecarbon": "codecarbon", "azure_ml": "azureml", "trackio": "trackio",
    "swanlab": "swanlab", "flyte": "flytekit", "dagshub": "dagshub",
}
_HUB_KEYS = ("push_to_hub", "hub_model_id")


def check_values(values: dict[str, Any], where: Callable[[str], str], arguments_class) -> None:
    """Raise ConfigError for the first `training.<key>` value that cannot work (see the module docstring)."""
    for key, value in values.items():
        _check_one(key, value, values, where)
    _check_environment(values, where)
    _check_combination(values, where, arguments_class)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_one(key: str, value, values: dict, where) -> None:
    if value is None or not _number(value):
        return
    if not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value}", where=where(key))
    if key == "num_train_epochs" and int(values.get("max_steps") or -1) > 0:
        return  # max_steps decides how long the run trains; the epoch count is not used
    if key in _POSITIVE and value <= 0:
        raise ConfigError(f"must be greater than 0, got {value}", where=where(key))
    if key in _NON_NEGATIVE and value < 0:
        raise ConfigError(f"must be at least 0, got {value}", where=where(key))
    if key in _BELOW_ONE and not 0 <= value < 1:
        raise ConfigError(f"must be at least 0 and below 1, got {value}", where=where(key))
    if key == "max_steps" and (value == 0 or value < -1):
        raise ConfigError(f"must be a positive number of steps (or -1: train num_train_epochs), got {value}", where=where(key))
    if key in ("seed", "data_seed") and not 0 <= value < 2**32:
        raise ConfigError(f"must be between 0 and 2**32 - 1 (numpy's range), got {value}", where=where(key))


def _check_environment(values: dict, where) -> None:
    """Options whose hardware, package or network is not there."""
    if values.get("fp16") or values.get("half_precision_backend") not in (None, "auto", "cpu_amp"):
        if values.get("fp16") and not _cuda():
            raise ConfigError("fp16 needs a CUDA GPU and none is visible (bf16 runs on CPUs)", where=where("fp16"))
    report_to = values.get("report_to")
    for name in [report_to] if isinstance(report_to, str) else report_to or []:
        package = _INTEGRATIONS.get(name)
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"reporting to {name} needs the {package} package, which is not installed", where=where("report_to"))
    for key in _HUB_KEYS:
        if values.get(key) and env.hub_offline():
            raise ConfigError(
                "pushing to the Hugging Face Hub with HF_HUB_OFFLINE set would fail after training; "
                "the job publishes to output.uri", where=where(key),
            )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _check_combination(values: dict, where, arguments_class) -> None:
    """Build TrainingArguments once with the values given: its own checks of combinations."""
    with tempfile.TemporaryDirectory(prefix="finetune-check-") as tmp:
        try:
            # On a CPU the job trains with use_cpu (job/training/trainers.py); without it TrainingArguments
            # would refuse bf16 there.
            arguments_class(output_dir=tmp, **{"use_cpu": not _cuda(), **values})
        except (ValueError, TypeError, ImportError) as exc:
            text = first_line(exc)
            key = next((k for k in values if k in text), None)
            raise ConfigError(text, where=where(key) if key else "training") from None
