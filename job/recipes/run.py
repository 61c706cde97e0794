"""One fine-tuning run, top to bottom: config -> data -> task -> model -> training -> storage.

    finetune-job run                                    # embedded demo -> ./outputs/<run-id>/
    finetune-job run --config job.yaml                  # your data and model
    FINETUNE_OUTPUT__URI=s3://bucket/runs finetune-job run --config job.yaml

Order matters in three places: the output location is proven writable before any training (a typo'd
bucket fails in seconds, not after the run); everything is staged locally before anything is
uploaded; and `_SUCCESS` is written last, so a run killed at any point is never taken for finished.
What follows `_SUCCESS` (promotion, retention, deleting checkpoints) is `finish`: a rerun with the run
id of a finished run trains nothing and calls `finish` again, to complete whatever a failure left
undone (Kubernetes retries a pod that exited 6 after `_SUCCESS`, and may retry one that finished).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from job import models, storage, tasks, training
from job.config import JobConfig, redacted, schema
from job.data import sources
from job.data.read_errors import storage_faults
from job.data.rows import ROW_ID
from job.errors import ConfigError, Interrupted
from job.recipes import report
from job.retraining import promotion, retention, tracking
from job.storage import workdir
from job.training import checkpoints, head_only

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str
    location: str
    metrics: dict
    skipped: bool = False  # the run had already finished


def run(cfg: JobConfig, log_format: str = "text") -> RunResult:
    stop = checkpoints.StopRequest()
    stop.install()  # from here on, SIGTERM means "checkpoint at the next step and exit 10"
    run_id = cfg.run_id or new_run_id()
    config_yaml = redacted.dump_yaml(cfg)
    config_sha = config_fingerprint(cfg)
    store = storage.open_store(cfg.output.uri, cfg.s3)
    work = workdir.private(work_dir(cfg), run_id, chosen=cfg.output.work_dir is not None)
    progress_bars = training.progress_bars_wanted(log_format)
    training.quiet_libraries(progress_bars)
    args = training.arguments(cfg, work / "trainer", progress_bars=progress_bars)  # joins the other workers
    log.info("run %s: task %s, model %s, world size %d, output %s",
             run_id, cfg.task.name, cfg.model.name, args.world_size, store.url(run_id))

    # 0. Never redo or overwrite a finished run, but complete what followed its _SUCCESS; prove the
    #    output is writable before training.
    finished = storage.read_manifest(store, run_id)
    if finished is not None:
        if finished.get("config_sha256") != config_sha:
            raise ConfigError(f"run {run_id} already finished with a different config; choose a new run id", where="run_id")
        log.info("run %s already finished at %s; completing what follows its _SUCCESS", run_id, finished.get("finished_at"))
        metrics = finish(cfg, store, run_id) if args.process_index == 0 else {}
        if args.process_index == 0:
            tracking.complete(cfg, store, run_id, metrics)
        shutil.rmtree(work, ignore_errors=True)
        return RunResult(run_id, store.url(run_id), metrics, skipped=True)
    if args.process_index == 0:
        storage.probe(store)

    # 1. Data: raw splits, then what the task needs to know about them (columns, labels). Each node's
    #    first worker loads and tokenizes first; the others then read datasets' cache.
    task = tasks.get(cfg.task.name)
    with args.main_process_first(local=True, desc="load and tokenize"):
        raw = sources.load_splits(cfg)
        spec = task.inspect(raw, cfg)

        # 2. Model and tokenizer (a builtin model trains its tokenizer on the training texts).
        tokenizer, model = models.load(cfg, task, spec, raw["train"], work)
        if hasattr(task, "fit_to_model"):
            spec = task.fit_to_model(spec, model, cfg)

        # 3. Features: tokenized once; padding happens per batch in the collator.
        features, collator = training.prepare(cfg, task, spec, tokenizer, raw)
        resume_from, resumed = checkpoints.fetch_latest(store, run_id, work / "resume", config_sha)
    checkpoints.keep_global_batch(args, resumed, cfg.data.streaming)  # another world size: same global batch, or exit 3
    trained = models.parameter_counts(model, cfg)
    tokenized, cached = features, None
    if cfg.model.train == "head":
        # The frozen body reads every row once (all workers together); the head then trains and is
        # scored on its vectors, and the run publishes body and head as one model (job/training/head_only.py).
        cached = head_only.cache_features(model, features, collator, args)
        model, features, collator = cached.head, cached.features, cached.collator

    # 4. Train (from the latest complete checkpoint, if any), evaluate on validation, predict on test.
    publisher = checkpoints.publisher(store, run_id, cfg.checkpoint, stop, config_sha, work, checkpoints.batch_of(args))
    trainer = training.trainer(
        cfg, args, model, tokenizer, features, collator, compute_metrics=lambda p: task.compute_metrics(p, spec)
    )
    tracker = tracking.start(cfg, run_id, resume_from, args.process_index == 0)  # MLflow, when configured
    if tracker.on:
        trainer.add_callback(tracker.callback(stop))  # before the publisher: it writes into the checkpoint
    trainer.add_callback(publisher)
    if cached:
        trainer.add_callback(cached.one_thread())
    started = time.monotonic()
    # SIGTERM while training: a checkpoint at the next step, then exit 10. A streamed bucket that fails: exit 6.
    with stop.deferred(), storage_faults(cfg.data):
        train_result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        # Uploads can lag behind fast steps: a SIGTERM now waits for them (the grace period is the
        # checkpoints'), or the rerun would redo every step since the last one that was up.
        publisher.wait()
    if publisher.stopped_at is not None:
        saved = (f"its checkpoint is in {store.url(checkpoints.prefix(run_id))}/" if publisher.uploaded == publisher.stopped_at or args.process_index != 0
                 else "its checkpoint could not be uploaded, the rerun resumes from the last one that was")
        raise Interrupted(f"stopped by {stop.signal_name} at step {publisher.stopped_at}; {saved}; run again with run id {run_id} to resume")
    stop.raise_if_stopped()  # a SIGTERM after the last step (in the final evaluation) stops here, exit 10
    publisher.wait_for_cleanup()
    resumed_step = checkpoints.step_of(resume_from)
    if resumed_step is not None:
        train_result.metrics["train_loss"] = checkpoints.whole_run_loss(
            trainer.state.log_history, resumed_step, train_result.metrics["train_loss"], trainer.state.global_step
        )
    eval_metrics = training.final_evaluation(trainer)
    predicted = trainer.predict(features["test"], metric_key_prefix="test")
    _check_prediction_order(features["test"], raw["test"], predicted)
    metrics = {
        **train_result.metrics,
        **eval_metrics,
        **predicted.metrics,
        **{f"test_{key}": value for key, value in task.report(predicted, spec).items()},
        **trained,
        **(cached.metrics() if cached else {}),
        "world_size": args.world_size,
        "resumed_from_step": resumed_step,
        "wall_seconds": round(time.monotonic() - started, 2),
    }

    # Gate: score the current champion on this run's own evaluation rows (a changed test set cannot
    # fake a win) and decide; the decision and both scores go into metrics.json (job/retraining/promotion.py).
    # Every worker takes part: scoring is a distributed evaluation too.
    gate = promotion.Gate(cfg, store, run_id, promotion.evaluator(cfg, store, task, spec, raw, args), args.world_size)
    decision = gate.decide(metrics)
    metrics.update(decision.metrics())

    # 5. Stage every output locally, then publish with _SUCCESS last (the first worker only).
    if not trainer.is_world_process_zero():
        return RunResult(run_id, store.url(run_id), metrics)
    gate.workers_finished()
    stage = work / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    models.save_published(trainer, cfg, stage / "model", cached)
    # training_args.bin pickles every TrainingArguments field, hub_token included: not an output.
    (stage / "model" / "training_args.bin").unlink(missing_ok=True)
    # The precision it was trained and scored in, which `finetune-job predict` keeps.
    meta = {**models.meta(cfg), "bf16": bool(args.bf16)}
    (stage / "model" / models.META_FILE).write_text(json.dumps(meta, indent=2))
    trainer.state.save_to_json(str(stage / "trainer_state.json"))
    (stage / "config.yaml").write_text(config_yaml)
    (stage / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(stage / "predictions.jsonl", "w", encoding="utf-8") as out:
        for row in task.prediction_rows(raw["test"], predicted, spec):
            out.write(storage.json_line(row))
    report.write(stage, run_id=run_id, cfg=cfg, raw=raw, features=tokenized, spec=spec,
                 history=trainer.state.log_history, metrics=metrics)
    storage.publish(stage, store, run_id, extra={"config_sha256": config_sha})

    # 6. Only now that _SUCCESS is written: promote, apply retention, delete the checkpoints.
    metrics = finish(cfg, store, run_id, gate)
    tracker.finish(metrics, trainer.state.global_step)
    shutil.rmtree(work, ignore_errors=True)
    return RunResult(run_id, store.url(run_id), metrics)


def finish(cfg: JobConfig, store, run_id: str, gate: promotion.Gate | None = None) -> dict:
    """What follows `_SUCCESS`, each step idempotent, so that a rerun of a finished run id (no `gate`)
    completes whatever a failure left undone: move champion.json to this run if the gate said so
    (compare-and-swap, job/retraining/champion.py; metrics.json is made to say what happened); delete old runs,
    never the champion; delete this run's checkpoints; point MLflow's `champion` alias
    (job/retraining/tracking.py) at the champion. Returns the run's metrics as published."""
    metrics = promotion.settle(store, run_id, gate)
    tracking.sync_champion(cfg, store)  # the MLflow alias follows champion.json (a lagging one is repaired)
    retention.apply(store, cfg.retention, current_run=run_id)
    if not cfg.checkpoint.keep_after_success:
        storage.delete_tree(store, checkpoints.prefix(run_id))
    return metrics


def config_fingerprint(cfg: JobConfig) -> str:
    """What makes two runs the same run: the resolved config without where this node keeps its
    scratch files, how many workers it starts (a resumed run may land on other hardware), how many
    old runs are kept around, how long storage faults are retried (a rerun may retry longer), or where
    it is tracked (MLflow)."""
    resolved = schema.to_dict(cfg)
    resolved["output"].pop("work_dir", None)
    for key in ("max_attempts", "retry_seconds"):
        resolved["s3"].pop(key, None)
    for section in ("distributed", "retention", "run_id", "tracking"):
        resolved.pop(section, None)
    return hashlib.sha256(json.dumps(redacted.redact(resolved), sort_keys=True, default=str).encode()).hexdigest()


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def work_dir(cfg: JobConfig) -> Path:
    return Path(cfg.output.work_dir) if cfg.output.work_dir else Path(tempfile.gettempdir()) / "finetune-job"


def _check_prediction_order(features, raw, predicted) -> None:
    """Predictions must line up with test rows one to one; a sampler that reorders them is a bug."""
    if len(predicted.predictions) != len(raw) or features[ROW_ID] != raw[ROW_ID]:
        raise RuntimeError(f"{len(predicted.predictions)} predictions for {len(raw)} test rows, or rows out of order")


def summary(result: RunResult) -> str:
    shown = {k: v for k, v in result.metrics.items() if k.startswith("test_") and isinstance(v, (int, float))}
    shown = {k: v for k, v in shown.items() if not k.endswith(("_runtime", "_per_second"))}
    lines = [f"run {result.run_id}" + (" (already finished)" if result.skipped else "")]
    lines += [f"  {key}: {value:.4f}" for key, value in shown.items()]
    if "promotion_decision" in result.metrics:
        lines.append(f"promotion: {result.metrics['promotion_decision']}: {result.metrics['promotion_reason']}")
    lines.append(f"outputs: {result.location}/")
    return "\n".join(lines)
