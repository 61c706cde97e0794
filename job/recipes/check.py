"""What `finetune-job check` verifies, in the order a run would meet it, each step a line of output."""

from __future__ import annotations

from typing import Iterator

from job import models, storage, tasks
from job.config import JobConfig
from job.data import sources
from job.data.rows import ROW_ID
from job.retraining import champion, promotion


def preflight(cfg: JobConfig) -> Iterator[str]:
    yield f"config: ok (task {cfg.task.name}, model {cfg.model.name})"

    task = tasks.get(cfg.task.name)
    sample = sources.sample_splits(cfg)
    spec = task.inspect(sample, cfg)
    columns = ", ".join(c for c in sample["train"].column_names if c != ROW_ID)
    labels = getattr(spec, "label_names", None)
    yield f"data: ok ({len(sample['train'])} rows read; columns {columns}" + (f"; labels {', '.join(labels)})" if labels else ")")

    store = storage.open_store(cfg.output.uri, cfg.s3)
    storage.probe(store)
    yield f"output: ok ({store.uri} is writable)"
    pointer, _ = champion.read(store)
    if pointer is not None:
        other = promotion.other_kind(cfg, store, pointer["run_id"])
        verdict = f"not comparable ({other}): runs keep it; promote by hand or use another output.uri" if other else "runs are scored against it"
        yield f"champion: run {pointer['run_id']}, {verdict}"

    yield f"model: ok ({models.describe_model(cfg)})"
