"""TrainingArguments with the job's defaults, and the Trainer that uses them.

The user's `training:` section is applied over the job's defaults, which differ from Hugging Face's
only where a batch job needs it:

- `train_sampling_strategy: group_by_length` reads the `length` column that preprocessing computed
  (batches of similar length waste little padding); streamed data keeps its own order;
- Hugging Face's `average_tokens_across_devices: true` is kept: a loss that is a sum over tokens is
  divided by the global batch's count, on any world size; a model whose loss is its own mean
  (classifier heads, T5) is found at the first step and divided by the accumulation steps instead
  (`_ignores_item_count`; Trainer alone doubled it with 2 micro-batches, or 2 workers);
- `ddp_find_unused_parameters: false`: every parameter takes part in every step, so the search for
  unused ones is pure overhead;
- `report_to: none`; checkpoints when the `checkpoint:` section says (job/training/checkpoints.py uploads
  them); evaluation every epoch (Hugging Face's default is none), reused as the final validation
  metrics (`final_evaluation`); seq2seq evaluates once, at the end, as generating is slow;
  bf16/TF32 when the GPU supports them.

The Trainer also counts the tokens it trains on, so that metrics.json says how fast the run went and,
on a GPU, how much of it the model used (job/training/throughput.py).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from job import tasks
from job.config import JobConfig, env
from job.data.rows import ROW_ID, is_iterable
from job.errors import ConfigError, first_line
from job.training import throughput

log = logging.getLogger(__name__)


# What each `model.train` mode needs where the user's `training:` section is silent
# (docs/transfer-learning.md). A new head or an adapter starts from scratch on a small share of the weights and wants a
# far larger rate than full fine-tuning's 5e-5 (Trainer's default, kept for `all`). The head (one
# linear layer over cached vectors; job/training/head_only.py) takes 3 epochs: on all-MiniLM-L6-v2's
# rotten_tomatoes vectors, 3 and 10 gave the same accuracy from 500 rows to all 8,530 (means over 4-6
# seeds within 0.01 of each other, either way), and 10 cost 5 s of a 40 s run; in batches of 32 (8,
# Trainer's default, would be 4x the steps), in random order (the vectors have no length to group
# by), logging less often.
MODE_DEFAULTS = {
    "all": {},
    "head": {"learning_rate": 1e-2, "num_train_epochs": 3, "per_device_train_batch_size": 32,
             "train_sampling_strategy": "random", "logging_steps": 50},
    "lora": {"learning_rate": 1e-3},
}


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_computes_bf16() -> bool:
    """The CPU has bf16 dot-product instructions (AVX-512 BF16, AMX), not the emulation oneDNN falls back to."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def precision_defaults(gpu: bool) -> dict:
    """bf16 mixed precision (fp32 master weights, autocast) where the hardware multiplies in bf16 natively."""
    import torch

    if gpu:
        return {"bf16": torch.cuda.is_bf16_supported(), "tf32": torch.cuda.get_device_capability()[0] >= 8}
    return {"bf16": cpu_computes_bf16()}


def arguments(cfg: JobConfig, output_dir: Path, *, progress_bars: bool):
    """TrainingArguments: the job's defaults, the task's, then the user's `training:` section on top."""
    task = tasks.get(cfg.task.name)
    gpu = on_gpu()
    defaults = {
        "report_to": "none",
        "eval_strategy": "no" if cfg.data.streaming else "epoch",
        "logging_strategy": "steps",
        "logging_steps": 10,
        "logging_first_step": True,
        "train_sampling_strategy": "random" if cfg.data.streaming else "group_by_length",
        "length_column_name": "length",
        "ddp_find_unused_parameters": False,
        "dataloader_pin_memory": gpu,
        "use_cpu": not gpu,  # without it, several CPU workers each train alone (no gloo process group)
        "disable_tqdm": not progress_bars,
        "seed": cfg.seed,
        # Checkpoints: the job's callback (job/training/checkpoints.py) also asks for them on a timer and on
        # SIGTERM; locally only the newest is kept, storage keeps checkpoint.keep.
        "save_strategy": "steps" if cfg.checkpoint.every_steps else "no",
        "save_steps": cfg.checkpoint.every_steps or 500,
        "save_total_limit": 1,
    }
    defaults.update(precision_defaults(gpu))
    defaults.update(task.training_defaults(cfg) if hasattr(task, "training_defaults") else {})
    defaults.update(MODE_DEFAULTS[cfg.model.train])
    try:
        return _classes(task)[1](output_dir=str(output_dir), **{**defaults, **cfg.training})
    except (ValueError, TypeError) as exc:
        raise ConfigError(first_line(exc), where="training") from exc


def final_evaluation(trainer) -> dict:
    """The validation metrics of the trained model: the evaluation logged at the last step when there
    is one (the end of the last epoch, with the default eval_strategy), as nothing changed since;
    else a fresh evaluation."""
    state = trainer.state
    last = next((entry for entry in reversed(state.log_history) if "eval_loss" in entry), None)
    if last is not None and last.get("step") == state.global_step:
        log.info("validation: the evaluation at step %d is the final one", state.global_step)
        return {key: value for key, value in last.items() if key.startswith("eval_") or key == "epoch"}
    return trainer.evaluate()


def trainer(cfg: JobConfig, args, model, tokenizer, features: dict, collator, compute_metrics):
    from transformers import PrinterCallback, ProgressCallback

    task = tasks.get(cfg.task.name)
    ledger = RowLedger.from_environment(args)
    trainer = _trainer_class(task)(
        model=model,
        args=args,
        train_dataset=features["train"],
        eval_dataset=features["validation"],
        processing_class=tokenizer,
        data_collator=ledger.collator(collator) if ledger else collator,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=getattr(task, "preprocess_logits_for_metrics", None),
    )
    # The job logs training progress itself (one line, or one JSON object, per logging step).
    trainer.remove_callback(PrinterCallback)
    if not args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_quiet_progress_callback())
    trainer.add_callback(_log_callback())
    trainer.add_callback(_sampler_epoch_callback(trainer))
    if is_iterable(features["train"]):
        trainer.add_callback(_stream_epoch_callback())
    trainer.ledger = ledger
    return trainer


class RowLedger:
    """With FINETUNE_ROW_LEDGER=DIR, every worker appends the ids of the training rows of each batch
    it trains on to DIR/rank-<rank>-<pid>.jsonl, one line per batch, written when the batch is trained
    on (not when it is read: dataloader workers read ahead): which rows a run learned from, and how
    the tests prove that a preempted, resumed or resized run saw every row exactly once per epoch."""

    KEY = "__ledger_row_ids"

    def __init__(self, folder: Path, rank: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"rank-{rank}-{os.getpid()}.jsonl"
        self.rank = rank

    @classmethod
    def from_environment(cls, args):
        folder = env.get("FINETUNE_ROW_LEDGER")
        return cls(Path(folder), args.process_index) if folder else None

    def collator(self, collate):
        """The task's collator, with the batch's row ids carried beside it (the model never sees them)."""
        key = self.KEY

        def with_ids(rows):
            ids = [row.pop(ROW_ID) for row in rows] if rows and ROW_ID in rows[0] else None
            batch = collate(rows)
            if ids is not None:
                batch[key] = ids
            return batch

        return with_ids

    def record(self, step: int, epoch: float, ids) -> None:
        with open(self.path, "a") as out:
            out.write(json.dumps({"rank": self.rank, "step": step, "epoch": epoch, "ids": list(ids)}) + "\n")


def predictor(cfg: JobConfig, model, tokenizer, collator, batch_size: int, output_dir: Path, *,
              bf16: bool | None = None):
    """A Trainer for inference only (`finetune-job predict`): same batching and ordering rules, and the
    run's precision (`bf16`: whether it trained in bf16; None: unknown, the job's default), so that its
    predictions are the run's (a GPU without bf16 falls back to fp32)."""
    task = tasks.get(cfg.task.name)
    gpu = on_gpu()
    precision = precision_defaults(gpu)
    if bf16 is not None:
        precision["bf16"] = bf16 and (precision["bf16"] or not gpu)
    args = _classes(task)[1](
        output_dir=str(output_dir),
        per_device_eval_batch_size=batch_size,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=gpu,
        use_cpu=not gpu,
        **precision,
        **(task.training_defaults(cfg) if hasattr(task, "training_defaults") else {}),
    )
    return evaluator(cfg, args, model, tokenizer, collator)


def evaluator(cfg: JobConfig, args, model, tokenizer, collator, compute_metrics=None, eval_dataset=None):
    """A Trainer that only evaluates or predicts, with the task's trainer class and hooks (generation
    for seq2seq, logits shrunk for language models). Given a run's own arguments it evaluates on all
    of the run's workers, as the promotion gate does with the champion's model."""
    task = tasks.get(cfg.task.name)
    return _trainer_class(task)(
        model=model,
        args=args,
        processing_class=tokenizer,
        data_collator=collator,
        eval_dataset=eval_dataset,  # Trainer wants one when the run's arguments evaluate every epoch
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=getattr(task, "preprocess_logits_for_metrics", None),
    )


def _classes(task) -> tuple:
    """The Trainer and TrainingArguments classes a task builds on (job/tasks: TRAINER)."""
    import transformers

    names = getattr(task, "TRAINER", ("Trainer", "TrainingArguments"))
    return getattr(transformers, names[0]), getattr(transformers, names[1])


def _trainer_class(task):
    from torch.utils.data import SequentialSampler

    class JobTrainer(throughput.counting(_classes(task)[0])):
        def train(self, resume_from_checkpoint=None, *args, **kwargs):
            self.resuming_from = resume_from_checkpoint  # where _stream_loader finds the stream's position
            output = super().train(resume_from_checkpoint, *args, **kwargs)
            tokens, sequences = self.counted()  # every worker: the counts are summed across them
            speed = throughput.train_metrics(self.model, tokens, sequences, output.metrics["train_runtime"], self.args.world_size)
            output.metrics.update(speed)
            # How long the training loop waited for its batches (reading, tokenizing, collating what
            # the DataLoader did not have ready; skipping, when a resumed epoch starts late), this worker.
            waited = getattr(self, "data_wait_seconds", 0.0)
            output.metrics["train_data_wait_seconds"] = round(waited, 3)  # its share: over train_runtime
            mfu = f", MFU {speed['train_mfu']:.1%}" if speed["train_mfu"] is not None else ""
            log.info("train: %d tokens, %.0f tokens/s%s; %.1f s waiting for data", tokens,
                     speed["train_tokens_per_second"], mfu, waited)
            return output

        def get_batch_samples(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                batches, items = super().get_batch_samples(*args, **kwargs)
            finally:
                self.data_wait_seconds = getattr(self, "data_wait_seconds", 0.0) + time.perf_counter() - started
            if items is not None and batches and self.model_accepts_loss_kwargs and not hasattr(self, "item_count_used"):
                self.item_count_used = not _ignores_item_count(self, batches[0])  # asked once, at the first step
                if not self.item_count_used:
                    # Trainer then neither divides the loss by the accumulation steps nor passes the count
                    # again: every worker decides alike (the same model), so the gather above stops on all.
                    self.model_accepts_loss_kwargs, items = False, None
            return batches, items

        def _get_train_sampler(self, train_dataset=None):
            # Trainer drops columns the model does not take (the precomputed `length` among them)
            # before asking for a sampler, which would then re-measure every row: read the column here.
            dataset, args = self.train_dataset, self.args
            if args.train_sampling_strategy == "group_by_length" and "length" in (dataset.column_names or []):
                # Grouped by the global batch: the same row order on any world size, so a run resumed
                # on another one (job/training/checkpoints.py: keep_global_batch) trains on the same rows per step.
                self.length_sampler = _length_grouped_sampler(
                    args.train_batch_size * args.gradient_accumulation_steps * args.world_size,
                    lengths=dataset[args.length_column_name],
                    seed=args.data_seed if args.data_seed is not None else args.seed,
                )
                return self.length_sampler
            return super()._get_train_sampler(dataset)

        def _get_dataloader(self, dataset, description, batch_size, *args, is_training: bool = False, **kwargs):
            if is_training and is_iterable(dataset):
                return _stream_loader(self, dataset, batch_size)
            dataloader = super()._get_dataloader(dataset, description, batch_size, *args, is_training=is_training, **kwargs)
            loader = getattr(dataloader, "base_dataloader", dataloader)  # accelerate's wrapper iterates this one
            if loader.num_workers > 0:
                loader.worker_init_fn = functools.partial(_dataloader_worker_start, loader.worker_init_fn)
            return dataloader

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if getattr(self, "ledger", None) is not None:
                self._signature_columns.append(ROW_ID)  # kept for the ledger's collator, which takes it off

        def training_step(self, model, inputs, *args, **kwargs):
            ids = inputs.pop(RowLedger.KEY, None)
            if ids is not None and getattr(self, "ledger", None) is not None:
                self.ledger.record(self.state.global_step + 1, math.floor(self.state.epoch or 0), ids)
            _seed_micro_batch(self)
            return super().training_step(model, inputs, *args, **kwargs)

        def prediction_step(self, model, inputs, *args, **kwargs):
            inputs.pop(RowLedger.KEY, None)
            return super().prediction_step(model, inputs, *args, **kwargs)

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            if getattr(self, "stream_loader", None) is not None:  # before on_save: the upload takes it along
                _save_stream_positions(self, Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}")

        def _save(self, output_dir=None, state_dict=None):
            # training_args.bin (written here, in every checkpoint and beside the model) pickles every
            # TrainingArguments field: leave hub_token out, so no secret lands on the local disk.
            token, self.args.hub_token = self.args.hub_token, None
            try:
                super()._save(output_dir, state_dict)
            finally:
                self.args.hub_token = token

        def evaluation_loop(self, *args, **kwargs):
            # Evaluation draws from the global RNG (each DataLoader iterator takes a seed from it, the
            # masked-LM collator its masks). Keep that out of training's RNG stream, so a resumed run
            # continues with the same dropout masks as one that never stopped; and start it from the
            # seed, so the same rows always get the same masks: two models (the promotion gate's
            # candidate and champion) are then scored on exactly the same task.
            import torch

            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.args.seed)
                return super().evaluation_loop(*args, **kwargs)

        def evaluate(self, eval_dataset=None, *args, **kwargs):
            self.eval_order = _longest_first(eval_dataset if eval_dataset is not None else self.eval_dataset)
            return super().evaluate(eval_dataset, *args, **kwargs)

        def predict(self, test_dataset, *args, **kwargs):
            self.eval_order = _longest_first(test_dataset)
            output = super().predict(test_dataset, *args, **kwargs)
            if self.eval_order is None or self.args.world_size > 1:
                return output
            return output._replace(predictions=_in_dataset_order(output.predictions, self.eval_order),
                                   label_ids=_in_dataset_order(output.label_ids, self.eval_order))

        def _get_eval_sampler(self, eval_dataset):
            # One worker: rows longest first, so each batch pads to about its own rows' length (the
            # rows come in any order of lengths, and a batch of 128 padded to its longest is mostly
            # padding); predict() puts the predictions back in dataset order. Several workers shard
            # in dataset order and gather_for_metrics drops the padded duplicates.
            if eval_dataset is None or self.args.world_size > 1:
                return None
            order = getattr(self, "eval_order", None)
            return order if order is not None and len(order) == len(eval_dataset) else SequentialSampler(eval_dataset)

    return JobTrainer


def _longest_first(dataset) -> list[int] | None:
    """Row indices, longest first (ties in dataset order), from the tasks' `length` column; None
    without one (a stream, cached head-only vectors)."""
    if not hasattr(dataset, "column_names") or is_iterable(dataset) or "length" not in (dataset.column_names or []):
        return None
    lengths = dataset["length"]
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def _in_dataset_order(values, order: list[int]):
    """Predictions made in `order` (row order[k] at position k), back in dataset order."""
    import numpy as np

    if isinstance(values, (tuple, list)):
        return type(values)(_in_dataset_order(v, order) for v in values)
    if values is None or not hasattr(values, "shape") or not values.shape or values.shape[0] != len(order):
        return values
    restored = np.empty_like(values)
    restored[np.asarray(order)] = values
    return restored


STREAM_POSITIONS = "stream_positions.pt"  # in a checkpoint of a streamed run: where each worker's reader is


def _stream_loader(trainer, dataset, batch_size: int):
    """A streamed train split's DataLoader, resumable where it stopped: torchdata's StatefulDataLoader
    over datasets' own stream position (`IterableDataset.state_dict()`: the file and the row in it,
    per DataLoader worker), saved with every checkpoint and loaded on resume, where Trainer would read
    the stream from its start again to skip what was trained. Each worker reads its own part
    (datasets' `split_dataset_by_node`: whole files where they divide evenly, else every world-size-th
    row), so nothing is dispatched from rank 0 and each pads its own batches. A checkpoint without
    positions (saved before the job kept them) resumes Trainer's way."""
    from datasets.distributed import split_dataset_by_node
    from torchdata.stateful_dataloader import StatefulDataLoader

    args = trainer.args
    if args.world_size > 1:
        dataset = split_dataset_by_node(dataset, rank=args.process_index, world_size=args.world_size)
    workers = args.dataloader_num_workers

    class StreamLoader(StatefulDataLoader):
        # datasets (5.2) starts every pass of a dataset object from the position loaded into it, and
        # without DataLoader workers the loader iterates this very object: after the first pass of a
        # resumed attempt, the next ones must start from the stream's start again, as they did before.
        start_again: dict | None = None

        def __iter__(self):
            passing = super().__iter__()
            return passing if self.start_again is None else self._then_start_again(passing)

        def _then_start_again(self, passing):
            yield from passing
            self.dataset.load_state_dict(self.start_again)
            self.start_again = None

    loader = StreamLoader(
        dataset, batch_size=batch_size, num_workers=workers, pin_memory=args.dataloader_pin_memory,
        collate_fn=trainer._get_collator_with_removed_columns(trainer.data_collator, description="training"),
        persistent_workers=False,  # kept workers would keep a resumed pass's position for the next (datasets#7447)
        prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
        worker_init_fn=functools.partial(_dataloader_worker_start, None) if workers > 0 else None,
    )
    saved = Path(trainer.resuming_from) / STREAM_POSITIONS if getattr(trainer, "resuming_from", None) else None
    if saved is not None and saved.is_file():
        import torch

        if workers == 0:
            loader.start_again = dataset.state_dict()  # the state of a stream not read yet
        loader.load_state_dict(torch.load(saved, weights_only=True)[args.process_index])
        args.ignore_data_skip = True  # the loader starts where the checkpoint's steps ended
        if args.process_index == 0:
            log.info("resume: the stream goes on from where %s left it, not read again", Path(trainer.resuming_from).name)
    trainer.stream_loader = loader
    return loader


def _save_stream_positions(trainer, folder: Path) -> None:
    """Every worker's stream position after this step's batches, gathered into the checkpoint that
    rank 0 uploads (the other ranks may be on nodes whose disks nobody uploads)."""
    import torch

    position = trainer.stream_loader.state_dict()
    positions = [position]
    if trainer.args.world_size > 1:
        positions = [None] * trainer.args.world_size
        torch.distributed.all_gather_object(positions, position)
    if trainer.args.process_index == 0:
        torch.save(positions, folder / STREAM_POSITIONS)


def _ignores_item_count(trainer, batch: dict) -> bool:
    """Whether the model's loss ignores the `num_items_in_batch` Trainer passes to any model whose forward
    takes **kwargs. Causal LMs divide their summed loss by it; classifier heads, BERT's masked LM, T5
    and BART return their own mean, and Trainer, taking the count as used, then skipped dividing by the
    accumulation steps: 2 micro-batches doubled the gradient and the logged loss (transformers 5.24),
    so a run resumed on half the workers trained on another loss than before. Asked of the model
    itself, once: its loss for the first batch counted as 1 item and as 2, without dropout."""
    import torch

    inputs = trainer._prepare_inputs({key: value for key, value in batch.items() if key != RowLedger.KEY})
    model, was_training = trainer.model, trainer.model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            one, two = (trainer.compute_loss(model, dict(inputs), num_items_in_batch=n).float() for n in (1, 2))
    finally:
        model.train(was_training)
    return bool(torch.isclose(one, two, rtol=1e-4)) and not bool(torch.isclose(one, 2 * two, rtol=1e-4))


def _seed_micro_batch(trainer) -> None:
    """Seed the RNG (dropout's) from the micro-batch's place in the global batch: on 2 workers, worker r
    trains on the global batch's r-th micro-batch; on 1 worker accumulating 2, its r-th micro-batch is
    the same rows. Each then draws the same dropout masks, and a run resumed on another world size
    (job/training/checkpoints.py: keep_global_batch) goes on as it would have, up to rounding."""
    import torch

    step, args = trainer.state.global_step, trainer.args
    seen = getattr(trainer, "micro_batch_of_step", (None, -1))
    micro = seen[1] + 1 if seen[0] == step else 0
    trainer.micro_batch_of_step = (step, micro)
    place = micro * args.world_size + args.process_index
    torch.manual_seed((args.seed * 1_000_003 + step * 1_009 + place) % 2**63)


def _dataloader_worker_start(init, worker_id: int) -> None:
    """DataLoader workers leave SIGTERM and SIGINT to the process they read for: the elastic agent
    signals a worker's whole process group, a terminal's Ctrl-C the foreground one, and a reader killed
    mid-batch would fail the step the job is about to checkpoint. In a process group of their own they
    still end with the worker (torch watches the parent, and stops them when it is done)."""
    os.setpgid(0, 0)
    if init is not None:
        init(worker_id)


def _length_grouped_sampler(batch_size: int, lengths: list[int], seed: int):
    """Length-grouped batches whose order depends only on (seed, epoch), so a resumed run skips
    exactly the batches the interrupted one trained on (Trainer calls set_epoch every epoch)."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeeded(LengthGroupedSampler):
        def set_epoch(self, epoch: int) -> None:
            self.generator.manual_seed(seed + epoch)

    sampler = EpochSeeded(batch_size, lengths=lengths, generator=torch.Generator())
    sampler.set_epoch(0)
    return sampler


def _sampler_epoch_callback(trainer):
    """Tells the length-grouped sampler which epoch starts. Trainer's own set_epoch does not reach it
    when a resumed epoch skips its first batches on several workers (the sampler sits three
    wrappers deep), and a wrong epoch would replay the wrong batch order."""
    from transformers import TrainerCallback

    class SamplerEpoch(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            sampler = getattr(trainer, "length_sampler", None)
            if sampler is not None:
                sampler.set_epoch(math.floor(state.epoch + 1e-6))  # state.epoch is 1.43 mid-epoch 1

    return SamplerEpoch()


def _stream_epoch_callback():
    """A stream's epoch is the share of max_steps trained, as Trainer counts it in one pass; Trainer's
    own count restarts with an attempt that resumed from the stream's position (it skipped nothing)."""
    from transformers import TrainerCallback

    class StreamEpoch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            state.epoch = state.global_step / state.max_steps

    return StreamEpoch()


def _log_callback():
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            values = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in logs.items()}
            shown = " ".join(f"{k}={v}" for k, v in values.items())
            log.info("step %d/%d %s", state.global_step, state.max_steps, shown, extra={"step": state.global_step, "logs": values})

    return LogCallback()


def _quiet_progress_callback():
    from transformers import ProgressCallback

    class Bars(ProgressCallback):
        """Progress bars on a terminal, without the raw dicts ProgressCallback also prints."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    return Bars()


def progress_bars_wanted(log_format: str) -> bool:
    return log_format == "text" and sys.stderr.isatty()


def quiet_libraries(progress_bars: bool) -> None:
    """Route transformers/datasets logs through our handler, at WARNING; bars only on a terminal."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    datasets.utils.logging.set_verbosity_warning()
    if not progress_bars:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
