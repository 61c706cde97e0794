"""The step every recipe that feeds a model shares: the task's features, tokenized once, and the
collator that pads each batch. run, predict, the promotion gate's scoring of the champion and the
GPU benchmark all call `prepare`, so a change to how features are made reaches all of them."""

from __future__ import annotations

from job.training.trainers import on_gpu


def pad_multiple() -> int | None:
    """Batches padded to a multiple of 8 tokens on a GPU (tensor cores work in tiles of 8), to their
    longest row on a CPU (every pad token there is wasted work)."""
    return 8 if on_gpu() else None


def prepare(cfg, task, spec, tokenizer, splits: dict) -> tuple[dict, object]:
    """(features, collator): `splits` tokenized by the task (datasets caches the result) and the
    task's collator for this tokenizer."""
    features = task.preprocess(splits, tokenizer, cfg, spec)
    return features, task.collator(tokenizer, cfg, spec, pad_to_multiple_of=pad_multiple())
