"""Head-only transfer learning (`model.train: head`): the frozen body reads every row once.

    finetune-job run --config job/configs/text-classification-minilm.yaml --set model.train=head

A frozen body gives the same output for a row in every epoch, so it runs once per row, not once per
row per epoch (which cost the old head-only mode 83% of full fine-tuning's time):

1. Features. Each split's tokenized rows, sorted by length and cut into batches of a fixed number
   of tokens (CPU_BATCH_TOKENS; so almost no padding), go through the body under
   torch.inference_mode (in bf16 when the run trains in bf16), and each row becomes one pooled
   vector (`model.pooling`: mean or cls, job/models/pooled.py). Several workers take every other
   batch and gather the vectors, so each holds all.
2. The head (job/models/pooled.py's PooledHead: one linear layer) trains on the cached vectors through the
   job's Trainer: checkpoints, SIGTERM, resume, several workers and logging work as in any run.
3. The run publishes body + head assembled (PooledTextClassifier), an ordinary from_pretrained
   directory; run on the text, it computes what the head computed on the cached vectors.

A resumed run computes the vectors again (one pass of the body) and resumes the head from its
checkpoint. metrics.json says what the pass cost: `features_seconds` and `features_tokens` (the
trainer's own `train_tokens` is 0: the head reads vectors, not tokens).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from job.data.rows import ROW_ID

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what the body reads of a tokenized row
# Tokens (rows x padded length) per forward pass of the body. On a CPU a small batch keeps the
# activations in cache: all-MiniLM-L6-v2 read 6,200-6,700 tokens/s in batches of 32-64 short rows
# (~2,000 tokens) against 5,000 in batches of 128 (two cores). A GPU wants large batches.
CPU_BATCH_TOKENS = 2048
GPU_BATCH_TOKENS = 65536


@dataclass
class HeadOnly:
    assembled: object  # PooledTextClassifier: the frozen body and the head being trained, what the run publishes
    features: dict  # split -> Vectors: one vector per row, its label and row id
    seconds: float
    tokens: int

    @property
    def head(self):
        return self.assembled.head

    def collator(self, rows: list[dict]) -> dict:
        import torch

        batch = {"features": torch.stack([row["features"] for row in rows])}
        if "labels" in rows[0]:
            batch["labels"] = torch.stack([row["labels"] for row in rows])
        return batch

    def one_thread(self):
        """A TrainerCallback that trains the head on one CPU thread: its operations are so small that
        waking a second thread costs more than it saves, ten times more on a busy machine (a step of
        batch 32 took 80 ms on two threads, 10 ms on one)."""
        import torch
        from transformers import TrainerCallback

        class OneThread(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                self.threads = torch.get_num_threads()
                torch.set_num_threads(1)

            def on_train_end(self, args, state, control, **kwargs):
                torch.set_num_threads(self.threads)  # the gate may run a whole model next

        return OneThread()

    def metrics(self) -> dict:
        return {"features_seconds": round(self.seconds, 2), "features_tokens": self.tokens}


def cache_features(model, features: dict, collator, args) -> HeadOnly:
    """Run the frozen body of `model` (a PooledTextClassifier) once over every split of the
    tokenized `features`; return the vectors as datasets the head trains and is scored on."""
    started = time.monotonic()
    vectors = {split: _pooled(model, ds, collator, args) for split, ds in features.items()}
    seconds = time.monotonic() - started
    tokens = sum(sum(ds["length"]) for ds in features.values())
    log.info("features: the frozen body read %d rows (%d tokens) once in %.1f s; only the head trains",
             sum(len(v) for v in vectors.values()), tokens, seconds)
    return HeadOnly(model, {split: _dataset(vectors[split], ds) for split, ds in features.items()}, seconds, tokens)


def _pooled(model, split, collator, args):
    """One pooled vector per row of `split`, in row order (every worker gets all of them)."""
    import numpy as np
    import torch

    from job.models.pooled import pool  # imports torch

    budget = CPU_BATCH_TOKENS if args.device.type == "cpu" else GPU_BATCH_TOKENS
    batches = _by_length(np.asarray(split["length"]), budget)
    mine = batches[args.process_index :: args.world_size]  # neighbouring batches have similar lengths
    columns = {name: split[name] for name in INPUTS if name in split.column_names}
    body = model.body.to(args.device).eval()
    vectors = np.zeros((len(split), model.head.classifier.in_features), dtype=np.float32)
    # The run's precision (bf16 autocast where the hardware has it, job/training/trainers.py), which the
    # published model's finetune_job.json records and `finetune-job predict` uses.
    precision = torch.autocast(args.device.type, dtype=torch.bfloat16, enabled=args.bf16)
    with torch.inference_mode(), precision:
        for rows in mine:
            batch = collator([{name: values[i] for name, values in columns.items()} for i in rows])
            batch = {name: tensor.to(args.device) for name, tensor in batch.items()}
            hidden = body(**batch).last_hidden_state
            vectors[rows] = pool(hidden, batch.get("attention_mask"), model.config.pooling).float().cpu().numpy()
    model.body.to("cpu")  # the body is not trained: leave the accelerator's memory to the head
    if args.world_size > 1:
        vectors = _gather(vectors, np.concatenate(mine) if mine else np.zeros(0, dtype=int))
    return vectors


def _by_length(lengths, budget: int) -> list:
    """Row indices sorted by length, cut into batches of at most `budget` tokens once padded (one row
    at least), so a batch of short rows holds many and one of long rows few."""
    import numpy as np

    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        if end - 1 > start and lengths[order[end - 1]] * (end - start) > budget:  # sorted: the last is the longest
            batches.append(order[start : end - 1])
            start = end - 1
    return batches + [order[start:]] if len(order) else batches


def _gather(vectors, mine):
    """Every worker computed the rows `mine`; hand each worker every row."""
    import torch.distributed as dist

    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (mine, vectors[mine]))
    for rows, values in parts:
        vectors[rows] = values
    return vectors


def _dataset(vectors, tokenized) -> "Vectors":
    import torch

    labels = torch.tensor(tokenized["labels"]) if "labels" in tokenized.column_names else None
    return Vectors(torch.from_numpy(vectors), labels, tokenized[ROW_ID])


class Vectors:
    """A split's cached vectors with their labels and row ids, in memory: a map-style dataset the
    Trainer reads a row at a time, which a datasets.Dataset would convert from Arrow at ~1 ms a row
    (a third of a second per batch of 32, thousands of batches in 10 epochs)."""

    def __init__(self, features, labels, row_ids: list):
        self.features, self.labels, self.row_ids = features, labels, row_ids

    @property
    def column_names(self) -> list[str]:
        return ["features", ROW_ID] + (["labels"] if self.labels is not None else [])

    def __len__(self) -> int:
        return len(self.row_ids)

    def __getitem__(self, key):
        if key == ROW_ID:  # the recipe checks that predictions line up with the test rows
            return self.row_ids
        row = {"features": self.features[key]}
        if self.labels is not None:
            row["labels"] = self.labels[key]
        return row
