"""permutation-lm: XLNet's permutation language modeling.

    finetune-job run --config job/configs/permutation-lm-tiny.yaml

Column: `data.text_column`, cut into blocks of `data.max_length` tokens; the test split is scored a row
at a time (see language_model.py). transformers' DataCollatorForPermutationLanguageModeling picks spans
to predict (`task.max_span_length` tokens at most, about `task.plm_probability` of the tokens) and a
random factorisation order (`perm_mask`), so each predicted token sees only the tokens before it in
that order. Its sampling draws from torch's generator, which Trainer seeds with training.seed and
saves in checkpoints. Metrics: loss and the perplexity of the predicted tokens. Predictions: each test
row's loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

from job.errors import ConfigError, ModelError
from job.tasks import language_model
from job.tasks.language_model import (  # noqa: F401  the interface functions all language-model tasks share
    Spec,
    compute_metrics,
    inspect,
    model_kwargs,
    prediction_rows,
    report,
    spec_from_model,
    texts,
)

MODEL_CLASS = "XLNetLMHeadModel"  # the only model with two-stream attention (perm_mask, target_mapping)
BUILTIN_MODEL = "builtin:tiny-xlnet"
PROMOTION_METRIC = "test_perplexity"  # what the promotion gate compares unless promotion.metric says

_RESAMPLES = 200  # a one-word row gets a target in about 1 draw of 12


@dataclass
class Settings:
    plm_probability: float = field(default=1 / 6, metadata={"help": "Share of tokens to predict (span length / context length)."})
    max_span_length: int = field(default=5, metadata={"help": "Longest span of consecutive tokens predicted together."})

    def __post_init__(self):
        if not 0 < self.plm_probability < 1:
            raise ConfigError(f"must be between 0 and 1, got {self.plm_probability}", where="task.plm_probability")
        if self.max_span_length < 1:
            raise ConfigError(f"must be at least 1, got {self.max_span_length}", where="task.max_span_length")


def preprocess(splits, tokenizer, cfg, spec: Spec):
    if tokenizer.mask_token is None or tokenizer.pad_token is None:
        raise ModelError("permutation-lm needs a tokenizer with a mask and a padding token", where="model.name")
    return language_model.preprocess(splits, tokenizer, cfg, spec, end_with_eos=False)


def collator(tokenizer, cfg, spec: Spec, pad_to_multiple_of: int | None):
    from transformers import DataCollatorForPermutationLanguageModeling

    settings = cfg.task.settings
    if cfg.data.pad_to_max_length:
        pad_to_multiple_of = language_model.block_size(tokenizer, cfg)
    sampling = DataCollatorForPermutationLanguageModeling(
        tokenizer, plm_probability=settings.plm_probability, max_span_length=settings.max_span_length
    )
    # Its leakage-free perm_mask needs an even length (half of the sequence is "reused" memory).
    even = math.lcm(2, pad_to_multiple_of or 1)
    return partial(_collate, tokenizer=tokenizer, sampling=sampling, pad_to_multiple_of=even)


def _collate(features: list[dict], tokenizer, sampling, pad_to_multiple_of: int) -> dict:
    """The collator's sampling on a batch padded here: its own padding neither makes the length even
    (a batch of odd length raised) nor returns an attention mask (padding was attended to).

    Its spans are laid along the padded width, so a short row can be left with nothing to predict, and
    a batch with nothing to predict has a NaN loss: such rows are sampled again (alone) until they
    have a target, as long as they have a token that is not special."""
    import torch

    batch = tokenizer.pad([{"input_ids": f["input_ids"]} for f in features], pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")
    ids = batch["input_ids"]
    sampled = list(sampling.torch_mask_tokens(ids.clone()))  # input_ids, perm_mask, target_mapping, labels
    has_words = (batch["attention_mask"].bool() & ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))).any(-1)
    for _ in range(_RESAMPLES):
        redo = has_words & (sampled[3] == -100).all(-1)
        if not redo.any():
            break
        for whole, rows in zip(sampled, sampling.torch_mask_tokens(ids[redo].clone())):
            whole[redo] = rows
    input_ids, perm_mask, target_mapping, labels = sampled
    return {
        "input_ids": input_ids,
        "attention_mask": batch["attention_mask"],
        "perm_mask": perm_mask,
        "target_mapping": target_mapping,
        "labels": labels,
    }


preprocess_logits_for_metrics = partial(language_model.token_losses, shift=False)
