"""masked-lm: predict masked tokens (BERT-style encoders), e.g. adapting an encoder to a domain.

    finetune-job run --config job/configs/masked-lm-tiny.yaml

Column: `data.text_column`, cut into blocks of `data.max_length` tokens; the test split is scored a row
at a time (see language_model.py). Settings:

- `task.mlm_probability` (0.15): the share of tokens (or of words) masked in each batch; of those,
  80% become the mask token, 10% a random token, 10% stay (BERT's recipe);
- `task.whole_word_mask` (false): mask every sub-word of a chosen word together, so the model cannot
  guess `##ization` from its first half. transformers' DataCollatorForLanguageModeling does it from
  the tokenizer's offsets (a fast tokenizer); chosen words are always replaced by the mask token.

Masks are drawn afresh for each batch from torch's generator, which Trainer seeds with training.seed
and saves in checkpoints: the same config masks the same tokens, and a resumed run goes on from there.
Metrics: loss and the perplexity of the masked tokens. Predictions: each test row's masked-token loss.
"""

from __future__ import annotations

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

MODEL_CLASS = "AutoModelForMaskedLM"
BUILTIN_MODEL = "builtin:tiny-bert"
PROMOTION_METRIC = "test_perplexity"  # what the promotion gate compares unless promotion.metric says

_COLLATED = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask", "offset_mapping")
_RESAMPLES = 100  # a lone one-word row is left unmasked 85% of the time


@dataclass
class Settings:
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens (or words) masked per batch."})
    whole_word_mask: bool = field(default=False, metadata={"help": "Mask all sub-words of a chosen word together."})

    def __post_init__(self):
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(f"must be between 0 and 1, got {self.mlm_probability}", where="task.mlm_probability")


def training_defaults(cfg) -> dict:
    # The collator reads special_tokens_mask and offset_mapping, which the model does not take:
    # Trainer would drop them. The collator keeps only what it reads instead.
    return {"remove_unused_columns": False}


def preprocess(splits, tokenizer, cfg, spec: Spec):
    if tokenizer.mask_token is None:
        raise ModelError("the tokenizer has no mask token, which masked-lm needs", where="model.name")
    whole_words = cfg.task.settings.whole_word_mask
    if whole_words and not tokenizer.is_fast:
        raise ModelError("whole-word masking reads token offsets, which only a fast tokenizer gives", where="task.whole_word_mask")
    options = {"return_special_tokens_mask": True, "return_offsets_mapping": whole_words}
    return language_model.preprocess(splits, tokenizer, cfg, spec, end_with_eos=False, tokenizer_kwargs=options)


def collator(tokenizer, cfg, spec: Spec, pad_to_multiple_of: int | None):
    from transformers import DataCollatorForLanguageModeling

    if cfg.data.pad_to_max_length:
        pad_to_multiple_of = language_model.block_size(tokenizer, cfg)
    settings = cfg.task.settings
    masking = DataCollatorForLanguageModeling(
        tokenizer,
        mlm=True,
        mlm_probability=settings.mlm_probability,
        whole_word_mask=settings.whole_word_mask,
        # Whole words are always replaced by the mask token; saying so spares a warning per run.
        mask_replace_prob=1.0 if settings.whole_word_mask else 0.8,
        random_replace_prob=0.0 if settings.whole_word_mask else 0.1,
        pad_to_multiple_of=pad_to_multiple_of,
    )
    return partial(_collate, masking=masking, pad_to_multiple_of=pad_to_multiple_of)


def _collate(features: list[dict], masking, pad_to_multiple_of: int | None) -> dict:
    """The columns the masking collator reads, with offset_mapping padded here: transformers 5.24's
    tokenizer.pad cannot pad it, so whole-word masking failed on every batch of unequal lengths.

    A batch of a few short rows can come out with no token masked, and then its loss is NaN (no
    target): such a batch is masked again."""
    features = [{key: f[key] for key in _COLLATED if key in f} for f in features]
    if "offset_mapping" in features[0]:
        width = max(len(f["input_ids"]) for f in features)
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        for f in features:  # padding is a special token: (0, 0) offsets make it no word
            f["offset_mapping"] = list(f["offset_mapping"]) + [[0, 0]] * (width - len(f["offset_mapping"]))
    maskable = any(0 in f["special_tokens_mask"] for f in features)
    batch = masking(features)
    for _ in range(_RESAMPLES):
        if not maskable or (batch["labels"] != -100).any():
            break
        batch = masking(features)
    return batch


preprocess_logits_for_metrics = partial(language_model.token_losses, shift=False)
