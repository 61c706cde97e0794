"""causal-lm: next-token prediction (GPT- or Llama-style decoders), e.g. adapting a model to a domain.

    finetune-job run --config job/configs/causal-lm-tiny.yaml

Column: `data.text_column`, each text ending with the tokenizer's end-of-text token; the test split is
scored a row at a time (see language_model.py). Setting:

- `task.packing` (auto): whole documents are packed into blocks of `data.max_length` tokens, each
  attending only to itself from its own position 0, with no padding (FlashAttention) or only at the
  end of a row (sdpa, eager). `auto` packs when the loaded model keeps packed documents apart, which
  is checked with two tiny forward passes (transformers' GPT-2, Llama, GPT-NeoX, Falcon, Phi do;
  OPT and Bloom do not, nor does a model with `training.use_cache`); `true` insists (a model error
  where it cannot); `false` cuts the concatenated text into blocks, attention running across the
  documents inside one, as in transformers' run_clm.py.

Metrics: loss and perplexity. Predictions: each test row's loss and perplexity.

A tokenizer without a padding token (Llama's) pads with its unknown token, else its end-of-text
token: the collator hides padding from the loss, and end-of-text must stay a target.
"""

from __future__ import annotations

import dataclasses
import logging
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

MODEL_CLASS = "AutoModelForCausalLM"
BUILTIN_MODEL = "builtin:tiny-gpt"
PROMOTION_METRIC = "test_perplexity"  # what the promotion gate compares unless promotion.metric says

log = logging.getLogger(__name__)


@dataclass
class Settings:
    """The block size is `data.max_length`."""

    packing: bool | str = field(
        default="auto",
        metadata={"help": "Pack whole documents, each attending only to itself: auto (when the model keeps them apart), true or false."},
    )

    def __post_init__(self):
        if not (isinstance(self.packing, bool) or self.packing == "auto"):
            raise ConfigError(f"choose auto, true or false, got {self.packing!r}", where="task.packing")


def fit_to_model(spec: Spec, model, cfg) -> Spec:
    """Decide packing with the model loaded (see the module docstring): FlashAttention takes one row
    per batch (its varlen kernel skips the padding and the other documents); sdpa and eager take
    padded rows, as one long row would make them attend over the whole batch, masked."""
    wanted = cfg.task.settings.packing
    if wanted is False:
        return spec
    attention = getattr(model.config, "_attn_implementation", None) or "eager"
    flash = "flash" in attention  # flash_attention_2/3 and the Hub's flash kernels; cannot run on CPU to be checked
    if cfg.training.get("use_cache"):
        reason = "training.use_cache is on, and with a cache transformers does not look for packed documents"
    elif flash or language_model.keeps_documents_apart(model):
        packing = "flat" if flash and not cfg.data.pad_to_max_length else "rows"
        log.info("causal-lm: documents packed (%s attention, %s)", attention, "one row per batch" if packing == "flat" else "padded rows")
        return dataclasses.replace(spec, packing=packing)
    else:
        reason = f"{type(model).__name__} with {attention} attention lets packed documents see each other"
    if wanted is True:
        raise ModelError(f"cannot pack: {reason}; set task.packing: false", where="task.packing")
    log.info("causal-lm: not packing (%s); text cut into blocks across documents", reason)
    return spec


def preprocess(splits, tokenizer, cfg, spec: Spec):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return language_model.preprocess(splits, tokenizer, cfg, spec, end_with_eos=True)


def collator(tokenizer, cfg, spec: Spec, pad_to_multiple_of: int | None):
    from transformers import DataCollatorForLanguageModeling

    if cfg.data.pad_to_max_length:
        pad_to_multiple_of = language_model.block_size(tokenizer, cfg)
    padded = DataCollatorForLanguageModeling(tokenizer, mlm=False, pad_to_multiple_of=pad_to_multiple_of)
    if spec is None or spec.packing is None:
        return padded
    return language_model.packed_collator(padded, flat=spec.packing == "flat", pad_to_multiple_of=pad_to_multiple_of)


preprocess_logits_for_metrics = partial(language_model.token_losses, shift=True)
