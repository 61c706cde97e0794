"""What of a config may be shown: secret-looking values and URL passwords replaced, for config.yaml,
`finetune-job config`, report.html and the log scrubber (job/cli/logs.py)."""

from __future__ import annotations

import re
from typing import Any

from job.config.schema import JobConfig, flatten, to_dict

# "token" only as a word of the key (hub_token), not max_new_tokens: a redacted count would also be
# scrubbed from every log line as a secret value.
_SECRET_KEY = re.compile(r"(^|_)token($|_)|secret|password|passwd|credential|api_key|access_key", re.I)
# The user[:password]@ of a URL (an endpoint, a data path): redacted in whatever value holds it.
_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^/?#\s@]+)@", re.I)
REDACTED = "***"


def is_secret(key: str) -> bool:
    return bool(_SECRET_KEY.search(key.rsplit(".", 1)[-1]))


def redact(value: Any, key: str = "") -> Any:
    """Replace values held under secret-looking keys, and the user:password@ of URLs; walk nested data."""
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if value is not None and is_secret(key):
        return REDACTED
    return redact_url(value) if isinstance(value, str) else value


def redact_url(text: str) -> str:
    """`http://user:pass@host/x` as `http://***@host/x`, wherever a URL appears in `text`."""
    return _USERINFO.sub(rf"\1{REDACTED}@", text)


def url_secrets(text: str) -> list[str]:
    """The user:password (and the password alone) of every URL in `text`, for the log scrubber."""
    found = []
    for userinfo in (m.group(2) for m in _USERINFO.finditer(text)):
        found += [userinfo, userinfo.partition(":")[2]]
    return [value for value in found if value]


def secret_values(cfg: JobConfig) -> list[str]:
    """Values the config holds under secret-looking keys or in URLs (for the log scrubber)."""
    flat = flatten(to_dict(cfg)).items()
    values = [str(v) for k, v in flat if v not in (None, "") and is_secret(k)]
    return values + [secret for _, v in flat for secret in url_secrets(str(v)) if v is not None]



def describe_sources(cfg: JobConfig) -> str:
    """One line per key: the resolved (redacted) value and the layer that set it."""
    import json

    flat = flatten(redact(to_dict(cfg)))
    width = max(len(k) for k in flat)
    return "\n".join(f"{key:<{width}}  {json.dumps(value)}  # {cfg.sources.get(key, 'default')}" for key, value in flat.items())


def dump_yaml(cfg: JobConfig) -> str:
    import yaml

    return yaml.safe_dump(redact(to_dict(cfg)), sort_keys=False)

