"""Logging: readable lines on a terminal, one JSON object per line on a cluster (`--log-format json`).

Every record passes a filter that replaces the values of secret environment variables (AWS keys,
session tokens, HF tokens) and the user:password of any URL wherever they appear, so no code path can
leak one into a log. A value is replaced where it stands whole (not inside a longer word: with
AWS_ACCESS_KEY_ID=test-key-0001, `test-key-0001` is scrubbed but `test_f1` is not), and values shorter
than MIN_SECRET_LENGTH are not taken for secrets (an access key id of `test` would turn every "test"
into "***").

Libraries log faults they recovered from with their traceback (urllib3's HeaderParsingError at
WARNING); without --debug the line stays and the traceback goes, so "Traceback" in a log means a bug.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from job.config import env, redacted

REDACTED = redacted.REDACTED
MIN_SECRET_LENGTH = 8  # AWS key ids are 20 characters, secret keys 40, HF tokens 37


class _RedactingHandler(logging.StreamHandler):
    """Redacts the finished line (message, extras and traceback alike) just before it is written."""

    def __init__(self, stream, debug: bool = False):
        super().__init__(stream)
        self.debug = debug
        endpoints = " ".join(env.get(name) or "" for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"))
        self.set_secrets(env.secret_values() + redacted.url_secrets(endpoints))

    def set_secrets(self, values) -> None:
        self.secrets = sorted({v for v in values if len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(_whole, self.secrets))) if self.secrets else None

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and not self.debug and not record.name.startswith("job"):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        return self.scrub(super().format(record))

    def scrub(self, text: str) -> str:
        text = redacted.redact_url(text)
        return self.pattern.sub(REDACTED, text) if self.pattern else text


def _whole(secret: str) -> str:
    """A regex for `secret` standing whole: no letter, digit or _ glued to an edge that is one."""
    before = r"(?<!\w)" if re.match(r"\w", secret[0]) else ""
    after = r"(?!\w)" if re.match(r"\w", secret[-1]) else ""
    return before + re.escape(secret) + after


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
            handler.set_secrets(handler.secrets + list(values))


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
    handler = _RedactingHandler(sys.stderr, debug)
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
