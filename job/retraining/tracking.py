"""Runs and the champion in MLflow: optional, and never a reason for a run to fail.

    tracking:
      uri: http://mlflow.mlflow:5000     # or MLFLOW_TRACKING_URI; neither: no tracking at all
      experiment: finetune-job           # MLFLOW_EXPERIMENT_NAME wins
      model_name: sentiment              # registered model of the champion (default finetune-job-<task>)

One job run is one MLflow run, however often it is preempted and resumed. The first attempt creates it
(tag `finetune_job.run_id`, the run id as its name) and writes its id into every checkpoint
(`mlflow_run.json`); an attempt that resumes from a checkpoint continues that MLflow run, and one that
starts over (preempted before its first checkpoint) finds it by the tag. MLFLOW_RUN_ID, when set, names
the run outright (MLflow's own meaning of it). Steps already in the run's metric history are not logged
again, so every metric's steps increase across restarts. Only the first worker (rank 0) talks to MLflow.

After a promotion (or `finetune-job promote` / `rollback`) the champion's model becomes a version of
the registered model, tagged with its run id, and the alias `champion` is moved to it. The
compare-and-swap stays in champion.json (job/retraining/champion.py): MLflow's aliases cannot be set
conditionally, so the alias only follows the pointer, after the swap. Every finished run, and a rerun
of one, sets it again, so an alias that lags (the server was down, the job was killed in between) is
repaired by the next run or rerun.

A tracking server that is down, slow or refusing costs one warning: tracking stops for the rest of the
attempt and the job goes on with the same exit codes. The client's retries are cut to 2 and its timeout
to 10 s unless MLFLOW_HTTP_REQUEST_MAX_RETRIES / MLFLOW_HTTP_REQUEST_TIMEOUT say otherwise (MLflow's
own defaults, 7 retries with backoff and 120 s, would hold a preempted pod for minutes).
mlflow-skinny is imported only when tracking is on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from job import storage
from job.config import env, redacted, schema
from job.errors import first_line
from job.retraining import champion

log = logging.getLogger(__name__)

RUN_TAG = "finetune_job.run_id"
RUN_FILE = "mlflow_run.json"  # in every checkpoint: which MLflow run a resumed attempt continues
ALIAS = "champion"
_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def tracking_uri(cfg) -> str | None:
    return cfg.tracking.uri or env.get("MLFLOW_TRACKING_URI") or None


def experiment_name(cfg) -> str:
    return env.get("MLFLOW_EXPERIMENT_NAME") or cfg.tracking.experiment


def model_name(cfg) -> str:
    return cfg.tracking.model_name or f"finetune-job-{cfg.task.name}"


def _client(uri: str):
    for name, value in _CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)  # read by MLflow's HTTP client, not by the job
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _warn(what: str, exc: BaseException) -> None:
    log.warning("tracking: %s failed (%s: %s); training goes on without MLflow", what, type(exc).__name__, first_line(exc))


class Tracker:
    """One job run's MLflow run, for the first worker; inert (every method a no-op) when off or failed."""

    def __init__(self, client=None, mlflow_run_id: str | None = None, logged_up_to: int = 0):
        self.client = client
        self.mlflow_run_id = mlflow_run_id
        self.logged_up_to = logged_up_to  # the highest step an earlier attempt logged: not logged again

    @property
    def on(self) -> bool:
        return self.client is not None

    def _call(self, what: str, method: str, *args, **kwargs):
        """client.METHOD(*args, **kwargs), unless tracking is off or has failed."""
        if not self.on:
            return None
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except Exception as exc:  # any failure of the server or the client: warn once, stop tracking
            _warn(what, exc)
            self.client = None
            return None

    def log_metrics(self, values: dict, step: int) -> None:
        if not self.on or step <= self.logged_up_to:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in _numbers(values).items()]
        if metrics:
            self._call("logging metrics", "log_batch", self.mlflow_run_id, metrics=metrics)

    def finish(self, metrics: dict, step: int) -> None:
        """The run's final metrics (metrics.json's numbers) at its last step, its outcome as tags."""
        if not self.on:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        final = [Metric(key, float(value), now, step) for key, value in _numbers(metrics).items()]
        tags = {f"finetune_job.{key}": str(value)[:5000] for key, value in metrics.items()
                if key in ("promotion_decision", "promotion_reason", "world_size")}
        for start in range(0, len(final), 1000):  # log_batch takes at most 1000 metrics
            self._call("logging the final metrics", "log_batch", self.mlflow_run_id, metrics=final[start:start + 1000])
        for key, value in tags.items():
            self._call("tagging the run", "set_tag", self.mlflow_run_id, key, value)
        self._call("closing the run", "set_terminated", self.mlflow_run_id, "FINISHED")

    def interrupted(self) -> None:
        self._call("closing the run", "set_terminated", self.mlflow_run_id, "KILLED")

    def callback(self, stop):
        """The TrainerCallback: metrics at every logging step, the run id into every checkpoint, the
        run marked KILLED when a SIGTERM stops training (the next attempt reopens it)."""
        from transformers import TrainerCallback

        tracker = self

        class Tracking(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero and logs:
                    tracker.log_metrics(logs, state.global_step)

            def on_save(self, args, state, control, **kwargs):
                # Runs before the checkpoint publisher's on_save (added after it), so the file is uploaded
                # with the checkpoint.
                if state.is_world_process_zero and tracker.mlflow_run_id:
                    folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                    (folder / RUN_FILE).write_text(json.dumps({"mlflow_run_id": tracker.mlflow_run_id}))

            def on_train_end(self, args, state, control, **kwargs):
                if state.is_world_process_zero and stop.requested:
                    tracker.interrupted()

        return Tracking()


def start(cfg, run_id: str, resume_from: Path | None, is_main: bool) -> Tracker:
    """The MLflow run of this job run: the one its checkpoint names, MLFLOW_RUN_ID, the one tagged
    with the run id, or a new one (with the resolved config as params). Off on other workers."""
    uri = tracking_uri(cfg)
    if not uri or not is_main:
        return Tracker()
    try:
        client = _client(uri)
        experiment = _experiment(client, experiment_name(cfg))
        mlflow_run_id = env.get("MLFLOW_RUN_ID") or _from_checkpoint(resume_from) or _tagged(client, experiment, run_id)
        if mlflow_run_id is None:
            created = client.create_run(experiment, run_name=run_id, tags={RUN_TAG: run_id})
            mlflow_run_id = created.info.run_id
            _log_params(client, mlflow_run_id, cfg)
            logged_up_to = 0
            log.info("tracking: MLflow run %s in experiment %s at %s", mlflow_run_id, experiment, redacted.redact_url(uri))
        else:
            client.update_run(mlflow_run_id, status="RUNNING")
            logged_up_to = _last_step(client, mlflow_run_id)
            log.info("tracking: continuing MLflow run %s (steps up to %d already logged)", mlflow_run_id, logged_up_to)
        return Tracker(client, mlflow_run_id, logged_up_to)
    except ImportError as exc:
        _warn("importing mlflow (pip install mlflow-skinny)", exc)
    except Exception as exc:
        _warn(f"starting the MLflow run at {redacted.redact_url(uri)}", exc)
    return Tracker()


def complete(cfg, store, run_id: str, metrics: dict) -> None:
    """A rerun of a finished run: log the final metrics and close the MLflow run if the attempt that
    published it stopped before doing so (killed, or the server was down then)."""
    uri = tracking_uri(cfg)
    if not uri:
        return
    try:
        client = _client(uri)
        experiment = client.get_experiment_by_name(experiment_name(cfg))
        mlflow_run_id = env.get("MLFLOW_RUN_ID") or (_tagged(client, experiment.experiment_id, run_id) if experiment else None)
        if mlflow_run_id is None or client.get_run(mlflow_run_id).info.status == "FINISHED":
            return
        state = json.loads(store.get_bytes(storage.join(run_id, "trainer_state.json")) or b"{}")
        log.info("tracking: closing MLflow run %s, which the run's publishing attempt left open", mlflow_run_id)
        Tracker(client, mlflow_run_id).finish(metrics, int(state.get("global_step", 0)))
    except ImportError as exc:
        _warn("importing mlflow (pip install mlflow-skinny)", exc)
    except Exception as exc:
        _warn("completing the MLflow run", exc)


def _experiment(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another run created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _from_checkpoint(checkpoint: Path | None) -> str | None:
    if checkpoint is None or not (checkpoint / RUN_FILE).is_file():
        return None
    return json.loads((checkpoint / RUN_FILE).read_text())["mlflow_run_id"]


def _tagged(client, experiment: str, run_id: str) -> str | None:
    runs = client.search_runs([experiment], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'", max_results=10,
                              order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def _last_step(client, mlflow_run_id: str) -> int:
    """The highest step of any metric the run has: an earlier attempt logged up to there."""
    run = client.get_run(mlflow_run_id)
    steps = [m.step for key in run.data.metrics for m in client.get_metric_history(mlflow_run_id, key)]
    return max(steps, default=0)


def _log_params(client, mlflow_run_id: str, cfg) -> None:
    from mlflow.entities import Param

    flat = _flatten(redacted.redact(schema.to_dict(cfg)))
    params = [Param(key, str(value)[:6000]) for key, value in flat.items() if value is not None]
    for start in range(0, len(params), 100):  # log_batch takes at most 100 params
        client.log_batch(mlflow_run_id, params=params[start:start + 100])


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _numbers(values: dict) -> dict[str, float]:
    return {key: value for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


# ------------------------------------------------------------------------------------------- champion


def sync_champion(cfg, store, rounds: int = 5) -> None:
    """Point the registered model's `champion` alias at the version of the run champion.json names,
    registering that version (source: the model in storage) if it is not yet. Reads the pointer again
    after setting the alias: a promotion that landed meanwhile is followed too, so two writers that
    set the alias in the wrong order still leave it on the newest champion."""
    uri = tracking_uri(cfg)
    if not uri:
        return
    name = model_name(cfg)
    try:
        client = _client(uri)
        aliased = None
        for _ in range(rounds):
            pointer, _ = champion.read(store)
            if pointer is None or pointer["run_id"] == aliased:
                return
            version = _version_of(client, name, pointer, experiment_name(cfg))
            current = _alias_version(client, name)
            if current != version:
                client.set_registered_model_alias(name, ALIAS, version)
                log.info("tracking: %s@%s is now version %s (run %s, generation %d)", name, ALIAS, version, pointer["run_id"], pointer["generation"])
            aliased = pointer["run_id"]
    except ImportError as exc:
        _warn("importing mlflow (pip install mlflow-skinny)", exc)
    except Exception as exc:
        _warn(f"moving the {ALIAS} alias of {name} (a rerun or the next promotion repairs it)", exc)


def _version_of(client, name: str, pointer: dict, experiment_name: str) -> str:
    """The registered model's version for the pointer's run: the existing one, or a new one."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="finetune-job champions; the alias champion follows champion.json")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    run_id = pointer["run_id"]
    mine = [v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get(RUN_TAG) == run_id]
    if mine:
        return min(mine, key=lambda v: int(v.version)).version
    experiment = client.get_experiment_by_name(experiment_name)
    tracked = _tagged(client, experiment.experiment_id, run_id) if experiment is not None else None
    created = client.create_model_version(name, source=pointer["model"], run_id=tracked,
                                          tags={RUN_TAG: run_id, "finetune_job.generation": str(pointer["generation"])})
    return created.version


def _alias_version(client, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, ALIAS).version
    except MlflowException:
        return None
