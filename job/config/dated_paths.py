"""Data paths that name the run's date, so a nightly CronJob needs no per-run config.

    data:
      train_files: s3://bucket/events/dt={date-7d..date-1d}/*.jsonl   # the seven days before the run
      test_files: s3://bucket/events/dt={date}/*.jsonl                 # the run's own day
      # {date-1d:%Y/%m/%d} for other layouts (strftime; the default format is %Y-%m-%d)

`{date}` is the scheduled date: `schedule.date` (`FINETUNE_SCHEDULE__DATE=2026-01-07`) when set, else
today in UTC, read once per process so a run that crosses midnight reads one consistent window. A
Kubernetes CronJob cannot template a value per run, so the default is what a nightly job relies on;
set the key to re-run or backfill a given day. `{date-Nd}`/`{date+Nd}` shift it by whole days.

`{date-6d..date}` is a window: the path is expanded once per day, oldest first. Days without files are
skipped with a warning (no events on a holiday); a window with no file at all is a data error, never an
empty model. Every window in one path must name the same days (e.g. `y={date-1d..date:%Y}/d={date-1d..date:%d}`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
from dataclasses import dataclass
from typing import Callable

from job.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_FORMAT = "%Y-%m-%d"
MAX_DAYS = 366  # a longer window is almost certainly a typo (and a year of listings)
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_DATE = re.compile(r"date(?:(?P<start>[+-]\d+)d)?(?P<window>\.\.date(?:(?P<end>[+-]\d+)d)?)?(?::(?P<format>[^{}]+))?")
_HINT = "use {date}, {date-1d}, {date-6d..date} or {date:%Y/%m/%d}"


@dataclass(frozen=True)
class _Placeholder:
    start: int  # days from the scheduled date
    end: int | None  # a window's last day; None for a single day
    format: str


def is_template(pattern: str) -> bool:
    return _PLACEHOLDER.search(pattern) is not None


def check_template(pattern: str, where: str) -> None:
    """Reject a malformed template while the config is loaded, before any data is read."""
    _placeholders(pattern, where)


def parse_date(text: str, where: str) -> dt.date:
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
            return dt.date.fromisoformat(text.strip())
    except ValueError:
        pass
    raise ConfigError(f"use a date as YYYY-MM-DD (quoted in YAML), got {text!r}", where=where)


def scheduled_date(cfg) -> dt.date:
    if cfg.schedule.date is not None:
        return parse_date(cfg.schedule.date, "schedule.date")
    return _today()


@functools.cache
def _today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


def expand(pattern: str, key: str, cfg, match: Callable[[str], list[str]]) -> list[str]:
    """The files a templated path names for the scheduled date; `match` globs one concrete path."""
    day = scheduled_date(cfg)
    holders = _placeholders(pattern, key)
    window = next((h for h in holders.values() if h.end is not None), None)
    days = [day + dt.timedelta(days=n) for n in range(window.start, window.end + 1)] if window else [None]
    found, empty = [], []
    for current in days:
        concrete = _PLACEHOLDER.sub(lambda m: _render(holders[m.group(0)], day, current), pattern)
        matched = match(concrete)
        found.extend(matched)
        if not matched:
            empty.append(concrete)
    source = "schedule.date" if cfg.schedule.date is not None else "today in UTC; set schedule.date for another day"
    if window:
        span = f"{days[0].isoformat()}..{days[-1].isoformat()}"
    else:
        span = (day + dt.timedelta(days=next(iter(holders.values())).start)).isoformat()
    if not found:
        others = len(empty) - 1
        what = f"no file matches {empty[0]}" + (f" nor for the other {others} days" if others > 1 else " nor for the other day" if others else "")
        raise DataError(f"no data for {span} (run date {day}, {source}): {what}", where=f"{key}: {pattern}")
    if empty:
        log.warning("data: %s: no files for %d of the %d days in %s: %s", key, len(empty), len(days), span, ", ".join(empty))
    log.info("data: %s: %s is %d file(s) for %s (run date %s)", key, pattern, len(found), span, day)
    return found


def _placeholders(pattern: str, where: str) -> dict[str, _Placeholder]:
    found: dict[str, _Placeholder] = {}
    for text in _PLACEHOLDER.findall(pattern):
        parsed = _DATE.fullmatch(text)
        if parsed is None:
            raise ConfigError(f"unknown placeholder {{{text}}} in {pattern!r}; {_HINT}", where=where)
        start = int(parsed["start"] or 0)
        end = int(parsed["end"] or 0) if parsed["window"] else None
        if end is not None and not start <= end:
            raise ConfigError(f"the window {{{text}}} ends before it starts; write the earlier day first", where=where)
        if end is not None and end - start + 1 > MAX_DAYS:
            raise ConfigError(f"the window {{{text}}} spans more than {MAX_DAYS} days", where=where)
        found["{" + text + "}"] = _Placeholder(start, end, parsed["format"] or DEFAULT_FORMAT)
    spans = {(h.start, h.end) for h in found.values() if h.end is not None}
    if len(spans) > 1:
        raise ConfigError(f"the windows in {pattern!r} name different days; use one window per path", where=where)
    return found


def _render(holder: _Placeholder, day: dt.date, current: dt.date | None) -> str:
    """A window's placeholder is the day being expanded; a single-day one is the run date shifted."""
    shown = current if holder.end is not None else day + dt.timedelta(days=holder.start)
    return shown.strftime(holder.format)
