"""seq2seq: text in, text out with an encoder-decoder (T5, BART, Marian), e.g. translation or summaries.

    finetune-job run --config job/configs/seq2seq-tiny.yaml

Columns: `data.text_column` is the source, `data.label_column` the target (a test split may lack it).
Sources are truncated to `data.max_length` tokens, targets to `task.max_target_length`. Settings:

- `task.source_prefix`: text put before every source, as T5 expects (`"translate English to German: "`);
- `task.max_target_length` (128): target tokens trained on;
- `task.num_beams` (1, greedy) and `task.max_new_tokens` (default: max_target_length): generation at
  evaluation and prediction (Seq2SeqTrainer with predict_with_generate).

Metrics on the generated text, all on a 0-100 scale: `bleu` (sacreBLEU, its default 13a tokenizer),
`rouge1`, `rouge2`, `rougeL` (rouge-score F-measure, stemmed), and `gen_len` (mean generated tokens),
plus the loss. References are the tokenized targets decoded back, as transformers' run_translation
does, so both sides went through the same tokenizer. Predictions: `source`, `reference` (null without
one) and `generated`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Iterator

from job.data.rows import ROW_ID, BadRow, column_error, is_iterable, max_tokens, require_columns, tokenize_splits
from job.errors import ConfigError, DataError

MODEL_CLASS = "AutoModelForSeq2SeqLM"
BUILTIN_MODEL = "builtin:tiny-t5"
PROMOTION_METRIC = "test_bleu"  # what the promotion gate compares unless promotion.metric says
TRAINER = ("Seq2SeqTrainer", "Seq2SeqTrainingArguments")


@dataclass
class Settings:
    source_prefix: str | None = field(default=None, metadata={"help": "Text put before every source (T5's task prefix)."})
    max_target_length: int = field(default=128, metadata={"help": "Truncate targets to N tokens."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width at evaluation and prediction (1: greedy)."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Longest generated text, in tokens (default: max_target_length)."})

    def __post_init__(self):
        for key in ("max_target_length", "num_beams", "max_new_tokens"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"must be at least 1, got {value}", where=f"task.{key}")


@dataclass
class Spec:
    source_column: str
    target_column: str
    prefix: str
    labelled: dict[str, bool] = field(default_factory=dict)  # split -> has targets
    tokenizer: Any = None  # set by preprocess: metrics decode generated ids with it


def training_defaults(cfg) -> dict:
    settings = cfg.task.settings
    new_tokens = settings.max_new_tokens or settings.max_target_length
    return {
        # Generating is the slow part of evaluating (a 10-row fixture spent 90% of its run on it):
        # validation is generated once, at the end, unless training.eval_strategy asks for more.
        "eval_strategy": "no",
        "predict_with_generate": True,
        "generation_num_beams": settings.num_beams,
        # Passed to generate() as max_length, which for an encoder-decoder counts the decoder's start
        # token: one more than the tokens generated.
        "generation_max_length": new_tokens + 1,
    }


# ---------------------------------------------------------------------------------------------- data


def inspect(splits, cfg) -> Spec:
    data = cfg.data
    require_columns(splits, data, "text_column")
    spec = Spec(data.text_column, data.label_column, cfg.task.settings.source_prefix or "")
    for split, ds in splits.items():
        spec.labelled[split] = _has_targets(ds, split, spec) if split != "train" or not is_iterable(ds) else True
    if not spec.labelled["validation"]:
        raise DataError("the validation split has no targets", where="data.label_column")
    return spec


def _has_targets(ds, split: str, spec: Spec) -> bool:
    """True when every row has a target, False when none has; a mix is an error."""
    if spec.target_column not in ds.column_names:
        return False
    present = sum(isinstance(t, str) for t in ds[spec.target_column])
    if 0 < present < len(ds):
        raise DataError(f"some rows of the {split} split have no target text", where="data.label_column")
    return present > 0


def spec_from_model(model_config, cfg, rows) -> Spec:
    if cfg.data.text_column not in rows.column_names:
        raise column_error(cfg.data.text_column, rows, "input", "--text-column")
    spec = Spec(cfg.data.text_column, cfg.data.label_column, cfg.task.settings.source_prefix or "")
    spec.labelled["test"] = _has_targets(rows, "input", spec)
    return spec


def texts(split, cfg) -> Iterator[str]:
    for row in split:
        for column in (cfg.data.text_column, cfg.data.label_column):
            if isinstance(row.get(column), str):
                yield row[column]


def model_kwargs(spec: Spec) -> dict[str, Any]:
    return {}


def preprocess(splits, tokenizer, cfg, spec: Spec):
    data, settings = cfg.data, cfg.task.settings
    max_length = max_tokens(tokenizer, data)
    padding = "max_length" if data.pad_to_max_length else False
    spec.tokenizer = tokenizer

    def encode(batch, split: str, labelled: bool):
        for i, source in enumerate(batch[spec.source_column]):
            if not isinstance(source, str):
                raise BadRow(batch[ROW_ID][i], "has no source text", "data.text_column")
        sources = [spec.prefix + source for source in batch[spec.source_column]]
        encoded = tokenizer(sources, truncation=True, max_length=max_length, padding=padding)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        if labelled:
            targets = tokenizer(text_target=batch[spec.target_column], truncation=True, max_length=settings.max_target_length)
            encoded["labels"] = targets["input_ids"]
        return encoded

    return tokenize_splits(splits, encode, data, spec.labelled)


def collator(tokenizer, cfg, spec: Spec, pad_to_multiple_of: int | None):
    from transformers import DataCollatorForSeq2Seq

    # Labels are padded with -100 (ignored by the loss); the model shifts them into decoder inputs.
    return partial(_collate, padding=DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=pad_to_multiple_of))


def _collate(features: list[dict], padding) -> dict:
    """DataCollatorForSeq2Seq's batch, less the `labels: None` it adds to rows without targets:
    Seq2SeqTrainer takes the key for labels and runs the model without decoder inputs, which fails
    (transformers 5.24), so an unlabelled test split could not be predicted."""
    batch = padding(features)
    if batch.get("labels") is None:
        batch.pop("labels", None)
    return batch


# ---------------------------------------------------------------------------------------------- metrics


def _decode(ids, tokenizer) -> list[str]:
    import numpy as np

    ids = np.where(ids < 0, tokenizer.pad_token_id, ids)  # -100: label padding, or rows padded when gathered
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def compute_metrics(eval_prediction, spec: Spec) -> dict[str, float]:
    import numpy as np
    import sacrebleu
    from rouge_score import rouge_scorer

    generated = _decode(eval_prediction.predictions, spec.tokenizer)
    references = _decode(eval_prediction.label_ids, spec.tokenizer)
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    scores = [scorer.score(reference, text) for reference, text in zip(references, generated)]
    lengths = (eval_prediction.predictions >= 0) & (eval_prediction.predictions != spec.tokenizer.pad_token_id)
    return {
        "bleu": float(sacrebleu.corpus_bleu(generated, [references]).score),
        **{kind: 100 * float(np.mean([s[kind].fmeasure for s in scores])) for kind in kinds},
        "gen_len": float(lengths.sum(-1).mean()),
    }


def report(predict_output, spec: Spec) -> dict[str, Any]:
    return {}


def prediction_rows(raw_test, predict_output, spec: Spec) -> Iterator[dict[str, Any]]:
    generated = _decode(predict_output.predictions, spec.tokenizer)
    for i, row in enumerate(raw_test):
        yield {
            "id": row[ROW_ID],
            "source": row[spec.source_column],
            "reference": row.get(spec.target_column) if spec.labelled.get("test") else None,
            "generated": generated[i],
        }
