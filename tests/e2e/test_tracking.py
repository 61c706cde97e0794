"""MLflow tracking against a real `mlflow server` (SQLite store, conftest.py) and the suite's S3 server:
one MLflow run per job run across SIGTERM and resume, monotonic steps, final metrics; the registered
model's `champion` alias following promotion, rollback and a rerun's repair; a server that is down
costing a warning, never the run."""

from __future__ import annotations

import json
import uuid

import pytest

from conftest import base_env, free_port, run_cli, run_cli_here, tiny_config, write_yaml
from test_distributed import _interrupt  # start the CLI, SIGTERM it at a training step

RUN_TAG = "finetune_job.run_id"


def _runs(client, experiment: str, run_id: str) -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'")


def _steps(client, mlflow_run_id: str, key: str) -> list[int]:
    return [m.step for m in sorted(client.get_metric_history(mlflow_run_id, key), key=lambda m: (m.timestamp, m.step))]


@pytest.mark.slow
def test_one_mlflow_run_across_sigterm_and_resume(s3_server, bucket, mlflow_server, tmp_path):
    experiment = f"resume-{uuid.uuid4().hex[:8]}"
    cfg = tiny_config(f"s3://{bucket}/runs", tracking={"uri": mlflow_server.uri, "experiment": experiment})
    cfg["training"].update({"num_train_epochs": 2, "logging_steps": 1, "per_device_train_batch_size": 16})  # 60 steps
    path = write_yaml(tmp_path / "job.yaml", cfg)
    env = base_env(**s3_server.env(), FINETUNE_RUN_ID="tracked")
    client = mlflow_server.client()

    code, stderr = _interrupt(["run", "--config", str(path)], env, tmp_path, at_step=20)
    assert code == 10, stderr[-3000:]
    (first,) = _runs(client, experiment, "tracked")
    assert first.info.status == "KILLED"
    stopped_at = max(_steps(client, first.info.run_id, "loss"))
    checkpoint = json.loads(s3_server.client().get_object(
        Bucket=bucket, Key=f"runs/tracked/checkpoints/checkpoint-{stopped_at}/mlflow_run.json")["Body"].read())
    assert checkpoint == {"mlflow_run_id": first.info.run_id}

    resumed = run_cli_here("run", "--config", str(path), env=env, cwd=tmp_path, check=True)
    assert f"continuing MLflow run {first.info.run_id}" in resumed.stderr
    (run,) = _runs(client, experiment, "tracked")  # still exactly one run
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"

    metrics = json.loads(s3_server.client().get_object(Bucket=bucket, Key="runs/tracked/metrics.json")["Body"].read())
    assert metrics["resumed_from_step"] == stopped_at
    loss_steps = _steps(client, run.info.run_id, "loss")
    last = json.loads(s3_server.client().get_object(Bucket=bucket, Key="runs/tracked/trainer_state.json")["Body"].read())["global_step"]
    assert loss_steps == list(range(1, last + 1))  # every step once, in order, across both attempts
    for key in run.data.metrics:
        steps = _steps(client, run.info.run_id, key)
        assert steps == sorted(steps), key  # never back in time
    for key in ("test_accuracy", "test_f1", "eval_loss", "train_loss"):
        assert run.data.metrics[key] == pytest.approx(metrics[key]), key  # the final value is metrics.json's
    assert run.data.params["training.learning_rate"] == "0.002"
    assert run.data.params["model.name"] == "builtin:tiny-bert"

    # Killed after _SUCCESS, before the MLflow run was closed (left as the kill leaves it): the rerun,
    # which trains nothing, closes it.
    client.set_terminated(run.info.run_id, "KILLED")
    rerun = run_cli_here("run", "--config", str(path), env=env, cwd=tmp_path, check=True)
    assert "already finished" in rerun.stderr and f"closing MLflow run {run.info.run_id}" in rerun.stderr
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert len(_runs(client, experiment, "tracked")) == 1


@pytest.mark.slow
def test_champion_alias_follows_promotion_rollback_and_rerun(s3_server, bucket, mlflow_server, tmp_path):
    model = f"m-{uuid.uuid4().hex[:8]}"
    cfg = tiny_config(f"s3://{bucket}/runs", tracking={"uri": mlflow_server.uri, "model_name": model, "experiment": model},
                      promotion={"mode": "always"})
    cfg["training"]["num_train_epochs"] = 1
    path = write_yaml(tmp_path / "job.yaml", cfg)
    env = base_env(**s3_server.env())
    client = mlflow_server.client()

    def champion_version():
        version = client.get_model_version_by_alias(model, "champion")
        return version.version, version.tags[RUN_TAG], version.source

    for run_id, workers in (("first", "1"), ("second", "2")):
        launch = run_cli if workers == "2" else run_cli_here  # two workers need their own processes
        proc = launch("run", "--config", str(path), "--set", f"distributed.nproc_per_node={workers}",
                       env={**env, "FINETUNE_RUN_ID": run_id}, cwd=tmp_path, check=True)
        assert f"world size {workers}" in proc.stderr
        version, tagged, source = champion_version()
        assert tagged == run_id and source == f"s3://{bucket}/runs/{run_id}/model"
    # Two workers, one MLflow run, each step logged once: only rank 0 talks to MLflow.
    (tracked_second,) = _runs(client, model, "second")
    loss_steps = _steps(client, tracked_second.info.run_id, "loss")
    assert loss_steps and len(loss_steps) == len(set(loss_steps))
    assert client.get_model_version_by_alias(model, "champion").run_id == tracked_second.info.run_id
    second_version = champion_version()[0]

    run_cli_here("rollback", "--config", str(path), env=env, cwd=tmp_path, check=True)
    version, tagged, _ = champion_version()
    assert tagged == "first" and version == "1"  # the alias moved back to the first run's version
    assert len(client.search_model_versions(f"name = '{model}'")) == 2  # no new version for a rollback

    # An alias that lags champion.json (set by hand here, as a server outage would leave it): a rerun
    # of a finished run id repairs it.
    client.set_registered_model_alias(model, "champion", second_version)
    rerun = run_cli_here("run", "--config", str(path), env={**env, "FINETUNE_RUN_ID": "second"}, cwd=tmp_path, check=True)
    assert "already finished" in rerun.stderr
    assert champion_version()[1] == "first"

    run_cli_here("promote", "second", "--config", str(path), env=env, cwd=tmp_path, check=True)
    assert champion_version()[:2] == (second_version, "second")


@pytest.mark.slow  # about a minute here: a run, plus the client's retries against a closed port
def test_a_tracking_server_that_is_down_does_not_fail_the_run(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = tiny_config(str(tmp_path / "runs"), tracking={"uri": down}, promotion={"mode": "always"})
    cfg["training"]["num_train_epochs"] = 1
    path = write_yaml(tmp_path / "job.yaml", cfg)
    env = base_env(FINETUNE_RUN_ID="untracked")  # the job's own retry and timeout defaults
    proc = run_cli_here("run", "--config", str(path), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tracking: starting the MLflow run at" in proc.stderr and "training goes on without MLflow" in proc.stderr
    assert "tracking: moving the champion alias" in proc.stderr
    assert (tmp_path / "runs" / "untracked" / "_SUCCESS").is_file()
    assert json.loads((tmp_path / "runs" / "champion.json").read_text())["run_id"] == "untracked"
    promote = run_cli_here("promote", "untracked", "--config", str(path), env=env, cwd=tmp_path)
    assert promote.returncode == 0 and "tracking: moving the champion alias" in promote.stderr, promote.stderr[-2000:]


@pytest.mark.parametrize("value", ["mlflow", "[mlflow]"])
def test_report_to_mlflow_is_refused(no_env, value):
    """Hugging Face's MLflowCallback would open a new MLflow run on every attempt: the tracking section it is."""
    from job.cli import config_loader
    from job.errors import ConfigError

    with pytest.raises(ConfigError) as failure:
        config_loader.load(None, (f"training.report_to={value}",))
    assert "training.report_to" in failure.value.format_message() and "tracking:" in failure.value.format_message()
