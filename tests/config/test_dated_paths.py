"""Data paths that name the run's date: resolution, windows, and an empty window failing clearly."""

from __future__ import annotations

import datetime as dt
import logging
import re

import pytest

from conftest import base_env, run_cli_here, tiny_config, write_yaml
from job.config import dated_paths
from job.config import JobConfig, ScheduleConfig
from job.errors import ConfigError, DataError


def _cfg(date: str | None = "2026-01-07") -> JobConfig:
    return JobConfig(schedule=ScheduleConfig(date=date))


def _expand(pattern: str, existing: set[str], date: str | None = "2026-01-07") -> tuple[list[str], list[str]]:
    """(files found, concrete paths asked for), with `existing` standing in for the file system."""
    asked = []

    def match(concrete):
        asked.append(concrete)
        return [concrete] if concrete in existing else []

    return dated_paths.expand(pattern, "data.train_files", _cfg(date), match), asked


def test_single_days_offsets_and_formats_resolve_from_the_scheduled_date():
    found, _ = _expand("s3://b/dt={date}/x.jsonl", {"s3://b/dt=2026-01-07/x.jsonl"})
    assert found == ["s3://b/dt=2026-01-07/x.jsonl"]
    found, _ = _expand("d/{date-1d}.csv", {"d/2026-01-06.csv"})
    assert found == ["d/2026-01-06.csv"]
    found, _ = _expand("d/{date+1d}.csv", {"d/2026-01-08.csv"})
    assert found == ["d/2026-01-08.csv"]
    found, _ = _expand("d/{date-7d:%Y/%m/%d}/part.parquet", {"d/2025/12/31/part.parquet"})
    assert found == ["d/2025/12/31/part.parquet"]
    found, _ = _expand("d/y={date:%Y}/m={date:%m}/{date-1d:%d}.json", {"d/y=2026/m=01/06.json"})
    assert found == ["d/y=2026/m=01/06.json"]


def test_a_window_expands_one_path_per_day_and_skips_empty_days(caplog):
    existing = {"e/dt=2026-01-05/p.jsonl", "e/dt=2026-01-07/p.jsonl"}
    with caplog.at_level(logging.INFO, logger="job.config.dated_paths"):
        found, asked = _expand("e/dt={date-2d..date}/p.jsonl", existing)
    assert asked == ["e/dt=2026-01-05/p.jsonl", "e/dt=2026-01-06/p.jsonl", "e/dt=2026-01-07/p.jsonl"]
    assert found == ["e/dt=2026-01-05/p.jsonl", "e/dt=2026-01-07/p.jsonl"]
    assert "no files for 1 of the 3 days in 2026-01-05..2026-01-07: e/dt=2026-01-06/p.jsonl" in caplog.text
    # Several placeholders of one window render the same day; a plain {date} stays the run date.
    _, asked = _expand("y={date-1d..date:%Y}/d={date-1d..date:%d}/run={date}.csv", {"y=2025/d=31/run=2026-01-01.csv"}, "2026-01-01")
    assert asked == ["y=2025/d=31/run=2026-01-01.csv", "y=2026/d=01/run=2026-01-01.csv"]


def test_an_empty_window_is_a_data_error_naming_the_days():
    with pytest.raises(DataError) as caught:
        _expand("s3://b/e/dt={date-6d..date}/*.jsonl", set())
    assert caught.value.format_message() == (
        "data error: data.train_files: s3://b/e/dt={date-6d..date}/*.jsonl: no data for 2026-01-01..2026-01-07 "
        "(run date 2026-01-07, schedule.date): no file matches s3://b/e/dt=2026-01-01/*.jsonl nor for the other 6 days"
    )
    with pytest.raises(DataError, match=r"no data for 2026-01-06 \(run date 2026-01-07, schedule.date\): no file matches d/2026-01-06.csv$"):
        _expand("d/{date-1d}.csv", set())


def test_without_schedule_date_the_run_date_is_today_in_utc():
    today = dated_paths._today()  # read once per process, so a run crossing midnight keeps its date
    now = dt.datetime.now(dt.timezone.utc)
    assert today in {now.date(), (now - dt.timedelta(days=1)).date()}  # this session began today or yesterday
    found, _ = _expand("d/{date}.csv", {f"d/{today.isoformat()}.csv"}, date=None)
    assert found == [f"d/{today.isoformat()}.csv"]
    with pytest.raises(DataError, match="today in UTC; set schedule.date for another day"):
        _expand("d/{date}.csv", set(), date=None)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("d/{dat}.csv", "unknown placeholder {dat} in 'd/{dat}.csv'; use {date}, {date-1d}, {date-6d..date} or {date:%Y/%m/%d}"),
        ("d/{date-1w}.csv", "unknown placeholder {date-1w}"),
        ("d/{date..date-3d}.csv", "the window {date..date-3d} ends before it starts; write the earlier day first"),
        ("d/{date-400d..date}.csv", "the window {date-400d..date} spans more than 366 days"),
        ("d/{date-1d..date}/{date-2d..date}.csv", "the windows in 'd/{date-1d..date}/{date-2d..date}.csv' name different days"),
    ],
)
def test_malformed_templates_are_config_errors(pattern, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        dated_paths.check_template(pattern, "data.train_files")


def test_templates_and_the_date_are_checked_when_the_config_loads(tmp_path):
    proc = run_cli_here("config", "--set", "data.dataset=null", "--set", "data.train_files=e/{dat}.jsonl", cwd=tmp_path)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "config error: data.train_files (--set): unknown placeholder {dat} in 'e/{dat}.jsonl'; "
        "use {date}, {date-1d}, {date-6d..date} or {date:%Y/%m/%d}"
    )
    proc = run_cli_here("config", env=base_env(FINETUNE_SCHEDULE__DATE="2026-13-01"), cwd=tmp_path)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "config error: schedule.date (env FINETUNE_SCHEDULE__DATE): use a date as YYYY-MM-DD (quoted in YAML), got '2026-13-01'"
    )


def _upload_demo_days(client, bucket: str, days: list[str]) -> None:
    import job

    demo = job.__path__[0] + "/demo"
    for day in days:
        client.upload_file(f"{demo}/reviews.train.jsonl", bucket, f"events/dt={day}/train.jsonl")
    client.upload_file(f"{demo}/reviews.test.jsonl", bucket, "events/test.jsonl")


def test_a_window_of_s3_data_resolves_from_the_environment(s3_server, bucket, tmp_path):
    _upload_demo_days(s3_server.client(), bucket, ["2026-01-05", "2026-01-07"])
    cfg = tiny_config(f"s3://{bucket}/runs")
    cfg["data"] = {"train_files": f"s3://{bucket}/events/dt={{date-2d..date}}/train.jsonl", "test_files": f"s3://{bucket}/events/test.jsonl"}
    path = write_yaml(tmp_path / "job.yaml", cfg)
    env = base_env(**s3_server.env(), FINETUNE_SCHEDULE__DATE="2026-01-07")
    proc = run_cli_here("check", "--config", str(path), env=env, cwd=tmp_path, check=True)
    assert "config: ok" in proc.stdout
    assert f"data.train_files: s3://{bucket}/events/dt={{date-2d..date}}/train.jsonl is 2 file(s) for 2026-01-05..2026-01-07" in proc.stderr
    assert "no files for 1 of the 3 days" in proc.stderr


def test_an_empty_window_fails_the_run_with_exit_4_and_one_line(s3_server, bucket, tmp_path):
    _upload_demo_days(s3_server.client(), bucket, ["2026-01-05"])
    cfg = tiny_config(f"s3://{bucket}/runs")
    cfg["data"] = {"train_files": f"s3://{bucket}/events/dt={{date-1d..date}}/train.jsonl"}
    path = write_yaml(tmp_path / "job.yaml", cfg)
    env = base_env(**s3_server.env(), FINETUNE_SCHEDULE__DATE="2026-01-07", FINETUNE_RUN_ID="empty")
    proc = run_cli_here("run", "--config", str(path), env=env, cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert errors[0].endswith(
        f"data error: data.train_files: s3://{bucket}/events/dt={{date-1d..date}}/train.jsonl: no data for "
        f"2026-01-06..2026-01-07 (run date 2026-01-07, schedule.date): no file matches "
        f"s3://{bucket}/events/dt=2026-01-06/train.jsonl nor for the other day"
    )
    assert s3_server.client().list_objects_v2(Bucket=bucket, Prefix="runs/").get("KeyCount") == 0
