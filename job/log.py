"""Logging: readable lines on a terminal, one JSON object per line on a cluster (`--log-format json`).

Every record passes a filter that replaces the values of secret environment variables (AWS keys,
session tokens, HF tokens) wherever they appear, so no code path can leak one into a log.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from job import env

REDACTED = "***"


class _RedactingHandler(logging.StreamHandler):
    """Redacts the finished line (message, extras and traceback alike) just before it is written."""

    def __init__(self, stream):
        super().__init__(stream)
        self.secrets = env.secret_values()

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(super().format(record))

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


def echo(text: str) -> None:
    """Print a command's result to stdout, scrubbed like the logs (it may echo user input)."""
    import click

    for handler in logging.getLogger().handlers:
        if isinstance(handler, _RedactingHandler):
            text = handler.scrub(text)
    click.echo(text)


def add_secrets(values: list[str]) -> None:
    """Scrub more values (secrets read from the config) from every later log line."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _RedactingHandler):
            handler.secrets = sorted(set(handler.secrets) | {v for v in values if len(v) >= 4}, key=len, reverse=True)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("step", "logs", "metrics", "rank", "exit_code"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(log_format: str = "text", debug: bool = False) -> None:
    """Configure the root logger once per process; library loggers propagate into it."""
    handler = _RedactingHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Every worker of a distributed run logs; the others only what is worth a second copy.
    root.setLevel(logging.DEBUG if debug else logging.INFO if env.rank() == 0 else logging.WARNING)
    logging.captureWarnings(True)
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "filelock", "fsspec", "aiobotocore", "s3fs", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def quiet_libraries(progress_bars: bool) -> None:
    """Route transformers/datasets logs through our handler, at WARNING; bars only on a terminal."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    datasets.utils.logging.set_verbosity_warning()
    if not progress_bars:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
