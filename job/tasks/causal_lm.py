"""causal-lm: next-token prediction (GPT- or Llama-style decoders), e.g. adapting a model to a domain.

    finetune-job run --config job/configs/causal-lm-tiny.yaml

Column: `data.text_column`. Text is cut into blocks of `data.max_length` tokens, each text ending
with the tokenizer's end-of-text token; the test split is scored a row at a time (see
language_model.py). Attention runs across the documents inside a block, as in transformers'
run_clm.py. Metrics: loss and perplexity. Predictions: each test row's loss and perplexity.

A tokenizer without a padding token (Llama's) pads with its unknown token, else its end-of-text
token: the collator hides padding from the loss, and end-of-text must stay a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from job.tasks import language_model
from job.tasks.language_model import (  # noqa: F401  the interface functions all language-model tasks share
    Spec, compute_metrics, inspect, model_kwargs, prediction_rows, report, spec_from_model, texts,
)

MODEL_CLASS = "AutoModelForCausalLM"
BUILTIN_MODEL = "builtin:tiny-gpt"
PROMOTION_METRIC = "test_perplexity"  # what the promotion gate compares unless promotion.metric says


@dataclass
class Settings:
    """causal-lm has no settings of its own: the block size is `data.max_length`."""


def preprocess(splits, tokenizer, cfg, spec: Spec):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return language_model.preprocess(splits, tokenizer, cfg, spec, end_with_eos=True)


def collator(tokenizer, cfg, spec: Spec, pad_to_multiple_of: int | None):
    from transformers import DataCollatorForLanguageModeling

    if cfg.data.pad_to_max_length:
        pad_to_multiple_of = language_model.block_size(tokenizer, cfg)
    return DataCollatorForLanguageModeling(tokenizer, mlm=False, pad_to_multiple_of=pad_to_multiple_of)


preprocess_logits_for_metrics = partial(language_model.token_losses, shift=True)
