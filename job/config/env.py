"""The one module that reads the process environment.

Configuration overrides use the `FINETUNE_` prefix. A double underscore separates nested keys and a
single underscore stays part of a key name:

    FINETUNE_RUN_ID=nightly-42               -> run_id
    FINETUNE_MODEL__NAME=bert-base-cased     -> model.name
    FINETUNE_TRAINING__LEARNING_RATE=3e-5    -> training.learning_rate
    FINETUNE_OUTPUT__URI=s3://bucket/runs    -> output.uri

Values are parsed as YAML scalars (`3e-5` is a float, `true` a bool, `[a, b]` a list) and then
type-checked like any other value. FINETUNE_CONFIG (the config file) and FINETUNE_LOG_FORMAT are
options of the command line, not config keys. Storage credentials are never read here: boto3 and s3fs
take them from the standard AWS chain (AWS_* variables, ~/.aws, instance or pod identity).
"""

from __future__ import annotations

import os

PREFIX = "FINETUNE_"
# Variables with the prefix that are command-line options, not config keys.
CLI_VARIABLES = {"FINETUNE_CONFIG", "FINETUNE_LOG_FORMAT", "FINETUNE_DEBUG",
                 "FINETUNE_WORKER_FAILURES",  # set by the agent for its workers (job/training/launch.py)
                 "FINETUNE_ROW_LEDGER"}  # where workers record the rows they trained on (job/training/trainers.py)

# Values that must never reach a log line or an output file, wherever they appear.
SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


def config_overrides() -> dict[str, tuple[str, str]]:
    """Map dotted config keys to (raw value, variable name) for every FINETUNE_* variable."""
    overrides = {}
    for name, value in sorted(os.environ.items()):
        if not name.startswith(PREFIX) or name in CLI_VARIABLES:
            continue
        key = ".".join(part.lower() for part in name[len(PREFIX):].split("__"))
        overrides[key] = (value, name)
    return overrides


def secret_values() -> list[str]:
    """Secret values present in the environment, longest first (so redaction never leaves a tail)."""
    values = {os.environ[name] for name in SECRET_VARIABLES if os.environ.get(name)}
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def get(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def first_of(*names: str) -> str | None:
    """The value of the first variable that is set and not empty."""
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return value
    return None


def inside_launched_worker() -> bool:
    """True in a process torchrun/elastic started (it sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def rank() -> int:
    return int(os.environ.get("RANK", "0"))
