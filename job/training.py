"""TrainingArguments with the job's defaults, and the Trainer that uses them.

The user's `training:` section is applied over the job's defaults, which differ from Hugging Face's
only where a batch job needs it:

- `train_sampling_strategy: group_by_length` reads the `length` column that preprocessing computed
  (batches of similar length waste little padding); streamed data keeps its own order;
- `average_tokens_across_devices: false`: with it on, DDP runs of classifiers reported a loss (and
  gradients) scaled by the world size;
- `ddp_find_unused_parameters: false`: every parameter takes part in every step, so the search for
  unused ones is pure overhead;
- `report_to: none`, `save_strategy: no` (the job saves and publishes the final model itself),
  evaluation every epoch, and bf16/TF32 when the GPU supports them.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

from job.config import JobConfig
from job.errors import ConfigError

log = logging.getLogger(__name__)


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def arguments(cfg: JobConfig, output_dir: Path, *, progress_bars: bool):
    """TrainingArguments: the job's defaults, then the user's `training:` section on top."""
    from transformers import TrainingArguments

    gpu = on_gpu()
    defaults = {
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no" if cfg.data.streaming else "epoch",
        "logging_strategy": "steps",
        "logging_steps": 10,
        "logging_first_step": True,
        "train_sampling_strategy": "random" if cfg.data.streaming else "group_by_length",
        "length_column_name": "length",
        "average_tokens_across_devices": False,
        "ddp_find_unused_parameters": False,
        "dataloader_pin_memory": gpu,
        "disable_tqdm": not progress_bars,
        "seed": cfg.seed,
    }
    if gpu:
        import torch

        defaults["bf16"] = torch.cuda.is_bf16_supported()
        defaults["tf32"] = torch.cuda.get_device_capability()[0] >= 8
    try:
        return TrainingArguments(output_dir=str(output_dir), **{**defaults, **cfg.training})
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc).strip().splitlines()[0][:300], where="training") from exc


def trainer(cfg: JobConfig, args, model, tokenizer, features: dict, collator, compute_metrics):
    from transformers import PrinterCallback, ProgressCallback

    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=features["train"],
        eval_dataset=features["validation"],
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
    )
    # The job logs training progress itself (one line, or one JSON object, per logging step).
    trainer.remove_callback(PrinterCallback)
    if not args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_quiet_progress_callback())
    trainer.add_callback(_log_callback())
    return trainer


def predictor(model, tokenizer, collator, batch_size: int, output_dir: Path):
    """A Trainer for inference only (`finetune-job predict`): same batching and ordering rules."""
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_eval_batch_size=batch_size,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=on_gpu(),
    )
    return _trainer_class()(model=model, args=args, processing_class=tokenizer, data_collator=collator)


def _trainer_class():
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class JobTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            # Trainer drops columns the model does not take (the precomputed `length` among them)
            # before asking for a sampler, which then re-measures every row. Hand it the dataset that
            # still has the column.
            return super()._get_train_sampler(self.train_dataset)

        def _get_eval_sampler(self, eval_dataset):
            # Evaluate in dataset order: length grouping would permute the predictions. Several
            # workers shard in order and gather_for_metrics drops the padded duplicates.
            if eval_dataset is None or self.args.world_size > 1:
                return None
            return SequentialSampler(eval_dataset)

    return JobTrainer


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
