"""token-classification: a tag per word, e.g. named entities (NER) in BIO tags.

    finetune-job run --config job/configs/token-classification-tiny.yaml

Columns: `data.text_column` holds a row's words (a list of strings) and `data.label_column` their tags
(a list of the same length). CoNLL files (`data.format: conll`, or a `.conll` name) are read into
columns `tokens` and `tags`; JSON rows and Hub datasets such as `wnut_17` (`tokens`, `ner_tags`) work
as they are. Tag names come from `data.label_names` (integer tags are ids into it), else from the
dataset's `ClassLabel`, else they are the sorted distinct training tags with `O` first.

Words are split into sub-words by the model's (fast) tokenizer. `task.label_subwords`:
- `first` (default): a word's first sub-word carries its tag, the others are ignored in the loss;
- `all`: every sub-word is trained on its word's tag (a `B-` tag becomes `I-` after the first).
Evaluation and predictions always read a word's tag at its first sub-word, so metrics are per word
and the same in both modes. Words past `data.max_length` sub-words are predicted `O` and, as in
transformers' run_ner, not scored: leave it unset (512) or above the longest sentence.

Metrics (seqeval, entity level, conlleval rules): precision, recall and F1 overall and per entity type,
plus token accuracy; `test_classification_report` holds the per-type table with supports.
Predictions: `tokens`, gold `tags` (null without them) and `predicted` tags, one per word.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterator

from job.data.rows import (
    ROW_ID,
    BadRow,
    column_error,
    is_iterable,
    max_tokens,
    naming_rows,
    require_columns,
    tokenize_splits,
)
from job.errors import ConfigError, DataError, ModelError

MODEL_CLASS = "AutoModelForTokenClassification"
BUILTIN_MODEL = "builtin:tiny-bert-cased"
PROMOTION_METRIC = "test_f1"  # what the promotion gate compares unless promotion.metric says

OUTSIDE = "O"
WORD_IDS = "word_ids"  # a feature column: each sub-word's word index, -1 for special tokens


@dataclass
class Settings:
    label_subwords: str = field(
        default="first", metadata={"help": "first: train on a word's first sub-word only; all: on every sub-word."}
    )

    def __post_init__(self):
        if self.label_subwords not in ("first", "all"):
            raise ConfigError(f"choose 'first' or 'all', got {self.label_subwords!r}", where="task.label_subwords")


@dataclass
class Spec:
    tokens_column: str
    tags_column: str
    label_names: list[str]
    labelled: dict[str, bool] = field(default_factory=dict)  # split -> has gold tags
    tag_ids: bool = False  # tags arrive as ids into label_names (a ClassLabel, or ints + data.label_names)
    test_word_ids: list[list[int]] = field(default_factory=list)  # filled by preprocess, read by prediction_rows

    def to_id(self, tag: Any, row_id) -> int:
        if self.tag_ids:
            if not isinstance(tag, int) or not 0 <= tag < len(self.label_names):
                raise BadRow(row_id, f"has tag id {tag!r}, not in 0..{len(self.label_names) - 1}", "data.label_column")
            return tag
        if str(tag) not in self.label2id:
            raise BadRow(row_id, f"has tag {tag!r}, not a known tag ({', '.join(self.label_names)})", "data.label_column")
        return self.label2id[str(tag)]

    @cached_property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    def name(self, tag: Any) -> str:
        return self.label_names[tag] if self.tag_ids else str(tag)


# ---------------------------------------------------------------------------------------------- data


def inspect(splits, cfg) -> Spec:
    data = cfg.data
    require_columns(splits, data, "text_column")
    names, tag_ids = _label_names(splits["train"], data)
    spec = Spec(data.text_column, data.label_column, names, tag_ids=tag_ids)
    for split, ds in splits.items():
        with naming_rows(ds, split, data):
            spec.labelled[split] = _check_rows(ds, split, spec) if split != "train" or not is_iterable(ds) else True
    if not spec.labelled["validation"]:
        raise DataError("the validation split has no tags", where="data.label_column")
    return spec


def _label_names(train, data) -> tuple[list[str], bool]:
    feature = (train.features or {}).get(data.label_column)
    inner = getattr(feature, "feature", None)  # a list of tags: the type of one
    if type(inner).__name__ == "ClassLabel":
        if data.label_names is not None and list(data.label_names) != list(inner.names):
            raise ConfigError(f"the dataset's tags are {inner.names}; data.label_names differs", where="data.label_names")
        return list(inner.names), True
    if data.label_names is not None:
        return [str(n) for n in data.label_names], str(getattr(inner, "dtype", "")).startswith("int")
    if is_iterable(train):
        raise ConfigError("a streamed dataset's tags cannot be inferred up front; list them", where="data.label_names")
    tags = {tag for row in train[data.label_column] if row for tag in row}
    if any(isinstance(tag, int) for tag in tags):
        raise ConfigError("integer tags need data.label_names (the name of each id, in order)", where="data.label_names")
    names = sorted(tags - {OUTSIDE})
    return ([OUTSIDE] if OUTSIDE in tags else []) + names, False


def _check_rows(ds, split: str, spec: Spec) -> bool:
    """True when every row has tags (one per word, each known), False when the split has none."""
    if spec.tags_column not in ds.column_names:
        return False
    for row_id, words, tags in zip(ds[ROW_ID], ds[spec.tokens_column], ds[spec.tags_column]):
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise BadRow(row_id, "has no list of words", "data.text_column")
        if tags is None or len(tags) != len(words):
            raise BadRow(row_id, f"has {len(words)} words but {len(tags or [])} tags", "data.label_column")
        for tag in tags:
            spec.to_id(tag, row_id)
    return True


def spec_from_model(model_config, cfg, rows) -> Spec:
    names = [model_config.id2label[i] for i in range(len(model_config.id2label))]
    data = cfg.data
    if data.text_column not in rows.column_names:
        raise column_error(data.text_column, rows, "input", "--text-column")
    feature = (rows.features or {}).get(data.label_column)
    tag_ids = str(getattr(getattr(feature, "feature", None), "dtype", "")).startswith("int")
    spec = Spec(data.text_column, data.label_column, names, tag_ids=tag_ids)
    with naming_rows(rows, "test", data):
        spec.labelled["test"] = _check_rows(rows, "input", spec)
    return spec


def texts(split, cfg) -> Iterator[str]:
    for row in split:
        if row.get(cfg.data.text_column):
            yield " ".join(row[cfg.data.text_column])


def model_kwargs(spec: Spec) -> dict[str, Any]:
    return {
        "num_labels": len(spec.label_names),
        "id2label": dict(enumerate(spec.label_names)),
        "label2id": spec.label2id,
    }


def preprocess(splits, tokenizer, cfg, spec: Spec):
    """Tokenize the words once; align tags to sub-words; keep each sub-word's word index."""
    if not tokenizer.is_fast:
        raise ModelError("token-classification maps sub-words to words, which needs a fast tokenizer", where="model.name")
    data = cfg.data
    max_length = max_tokens(tokenizer, data)
    padding = "max_length" if data.pad_to_max_length else False
    inside = _inside_ids(spec.label_names)

    def encode(batch, split: str, labelled: bool):
        encoded = tokenizer(batch[spec.tokens_column], is_split_into_words=True, truncation=True, max_length=max_length, padding=padding)
        word_ids = [[-1 if w is None else w for w in encoded.word_ids(i)] for i in range(len(encoded["input_ids"]))]
        encoded[WORD_IDS] = word_ids
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        if labelled:
            every_subword = split == "train" and cfg.task.settings.label_subwords == "all"
            encoded["labels"] = [
                _align(words, [spec.to_id(t, row_id) for t in tags], inside if every_subword else None)
                for words, tags, row_id in zip(word_ids, batch[spec.tags_column], batch[ROW_ID])
            ]
        return encoded

    out = tokenize_splits(splits, encode, data, spec.labelled)
    spec.test_word_ids = out["test"][WORD_IDS]
    return out


def _inside_ids(names: list[str]) -> list[int]:
    """For each tag id, the id a later sub-word of the same word gets: I-X for B-X, else itself."""
    ids = {name: i for i, name in enumerate(names)}
    return [ids.get("I-" + name[2:], i) if name.startswith("B-") else i for i, name in enumerate(names)]


def _align(word_ids: list[int], tags: list[int], inside: list[int] | None) -> list[int]:
    """Sub-word labels: the word's tag at its first sub-word; at the others -100 (ignored), or, with
    `inside` (label_subwords: all), the word's tag as an I- tag."""
    labels, previous = [], -1
    for word in word_ids:
        if word == -1:
            labels.append(-100)
        elif word != previous:
            labels.append(tags[word])
        else:
            labels.append(inside[tags[word]] if inside is not None else -100)
        previous = word
    return labels


def collator(tokenizer, cfg, spec: Spec, pad_to_multiple_of: int | None):
    from transformers import DataCollatorForTokenClassification

    return DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of)


# ---------------------------------------------------------------------------------------------- metrics


def _sequences(predictions, label_ids, spec: Spec) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tag names at the labelled positions (each word's first sub-word)."""
    predicted = predictions.argmax(-1)
    gold_rows, predicted_rows = [], []
    for guesses, labels in zip(predicted, label_ids):
        kept = labels != -100
        gold_rows.append([spec.label_names[t] for t in labels[kept]])
        predicted_rows.append([spec.label_names[t] for t in guesses[kept]])
    return gold_rows, predicted_rows


def compute_metrics(eval_prediction, spec: Spec) -> dict[str, float]:
    from seqeval.metrics import accuracy_score, classification_report

    gold, predicted = _sequences(eval_prediction.predictions, eval_prediction.label_ids, spec)
    table = classification_report(gold, predicted, output_dict=True, zero_division=0)
    overall = table["micro avg"]  # entity level, over every type: the usual NER score
    metrics = {
        "precision": overall["precision"],
        "recall": overall["recall"],
        "f1": overall["f1-score"],
        "accuracy": accuracy_score(gold, predicted),
    }
    for kind, scores in table.items():  # the entity types, and seqeval's averages over them
        if not kind.endswith(" avg"):
            metrics.update({f"precision_{kind}": scores["precision"], f"recall_{kind}": scores["recall"], f"f1_{kind}": scores["f1-score"]})
    return {name: float(value) for name, value in metrics.items()}  # numpy floats are no JSON


def report(predict_output, spec: Spec) -> dict[str, Any]:
    from seqeval.metrics import classification_report

    if predict_output.label_ids is None:
        return {}
    gold, predicted = _sequences(predict_output.predictions, predict_output.label_ids, spec)
    table = classification_report(gold, predicted, output_dict=True, zero_division=0)
    table = {kind: {key: float(value) for key, value in scores.items()} for kind, scores in table.items()}  # JSON: no numpy
    return {"classification_report": table}


def prediction_rows(raw_test, predict_output, spec: Spec) -> Iterator[dict[str, Any]]:
    predicted = predict_output.predictions.argmax(-1)
    for i, row in enumerate(raw_test):
        words = row[spec.tokens_column]
        tags = [OUTSIDE] * len(words)  # words past data.max_length keep O
        previous = -1
        for position, word in enumerate(spec.test_word_ids[i]):
            if word != -1 and word != previous:
                tags[word] = spec.label_names[int(predicted[i][position])]
            previous = word
        gold = row.get(spec.tags_column) if spec.labelled.get("test") else None
        yield {
            "id": row[ROW_ID],
            "tokens": words,
            "tags": [spec.name(t) for t in gold] if gold is not None else None,
            "predicted": tags,
        }
