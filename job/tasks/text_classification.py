"""text-classification: a label (or several, or a number) per text or text pair, e.g. sentiment.

    finetune-job run --config job/configs/text-classification-tiny.yaml

Columns: `data.text_column`, optional `data.text_pair_column`, `data.label_column`. `task.problem_type`:

- `single_label` (default): one label per row. Label names come from `data.label_names`, else from a
  `ClassLabel` feature, else they are the sorted distinct training labels; the model saves them as
  `id2label`/`label2id`.
- `multi_label`: the label column holds a list of labels per row (possibly empty); one sigmoid per
  label, a label is predicted when its probability is at least 0.5. Names as for single_label.
- `regression`: the label column holds a number; one output trained with mean squared error.

A test split with no label column (or only empty/-1 labels, as in GLUE test sets) still gets
predictions; it just has no test metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

from job.data.rows import ROW_ID, BadRow, column_error, is_iterable, max_tokens, require_columns, tokenize_splits
from job.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MODEL_CLASS = "AutoModelForSequenceClassification"
BUILTIN_MODEL = "builtin:tiny-bert"
PROMOTION_METRIC = "test_f1"  # what the promotion gate compares unless promotion.metric says
REGRESSION_PROMOTION_METRIC = "test_rmse"  # ... for a regression (lower is better)

PROBLEM_TYPES = {  # ours -> transformers' config.problem_type (it picks the loss from it)
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}
THRESHOLD = 0.5  # multi_label: a label is predicted when its sigmoid reaches this


@dataclass
class Settings:
    problem_type: str = field(
        default="single_label",
        metadata={"help": "single_label (one label per row), multi_label (a list of labels per row) or regression (a number)."},
    )
    positive_label: str | None = field(
        default=None,
        metadata={"help": "Two labels: the one binary precision, recall and F1 are measured on (default: the second in label order, id 1)."},
    )

    def __post_init__(self):
        if self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"choose one of {', '.join(PROBLEM_TYPES)}, got {self.problem_type!r}", where="task.problem_type")
        if self.positive_label is not None and self.problem_type != "single_label":
            raise ConfigError(f"binary F1 is for single_label, not {self.problem_type}", where="task.positive_label")


@dataclass
class Spec:
    text_column: str
    text_pair_column: str | None
    label_column: str
    label_names: list[str]  # empty for regression
    problem_type: str = "single_label"
    labelled: dict[str, bool] = field(default_factory=dict)  # split -> has gold labels
    class_label: bool = False  # labels arrive as ids into label_names (a ClassLabel, or ints + data.label_names)
    positive: int = 1  # two labels: the id binary precision, recall and F1 are measured on

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    def to_id(self, value: Any, split: str) -> int:
        if self.class_label:
            if not isinstance(value, int) or not 0 <= value < len(self.label_names):
                raise DataError(f"label id {value!r} in the {split} split is not in 0..{len(self.label_names) - 1}", where="data.label_column")
            return value
        key = str(value)
        if key not in self.label2id:
            raise DataError(
                f"label {value!r} in the {split} split is not a known label ({', '.join(self.label_names)})",
                where="data.label_column",
            )
        return self.label2id[key]

    def to_target(self, value: Any, split: str):
        """A row's label as the model's `labels`: an id, a multi-hot vector, or a float."""
        if self.problem_type == "regression":
            return float(value)
        if self.problem_type == "multi_label":
            hot = [0.0] * len(self.label_names)
            for one in value:
                hot[self.to_id(one, split)] = 1.0
            return hot
        return self.to_id(value, split)


def promotion_metric(settings: Settings) -> str:
    """The metric the promotion gate compares unless promotion.metric says: F1, or a regression's error."""
    return REGRESSION_PROMOTION_METRIC if settings.problem_type == "regression" else PROMOTION_METRIC


# ---------------------------------------------------------------------------------------------- data


def inspect(splits, cfg) -> Spec:
    data, problem_type = cfg.data, cfg.task.settings.problem_type
    require_columns(splits, data, "text_column", "text_pair_column")

    if problem_type == "regression":
        if data.label_names is not None:
            raise ConfigError("a regression has no label names; remove data.label_names", where="data.label_names")
        names, class_label = [], False
    else:
        names, class_label = _label_names(splits["train"], data, multi=problem_type == "multi_label")

    spec = Spec(data.text_column, data.text_pair_column, data.label_column, names, problem_type, class_label=class_label)
    spec.positive = _positive_label(names, cfg.task.settings.positive_label) if problem_type == "single_label" else 1
    for split, ds in splits.items():
        spec.labelled[split] = _check_labels(ds, split, spec) if split != "train" or not is_iterable(ds) else True
    if not spec.labelled["validation"]:
        raise DataError("the validation split has no labels", where="data.label_column")
    return spec


def _positive_label(names: list[str], wanted: str | None) -> int:
    """The id of the label binary F1 is measured on: task.positive_label, else the second label."""
    if wanted is None:
        if len(names) == 2:
            log.info("text-classification: binary precision, recall and F1 measure label %r (task.positive_label picks the other)", names[1])
        return 1
    if len(names) != 2:
        raise ConfigError(f"there are {len(names)} labels, and binary F1 needs two (F1 is macro-averaged)", where="task.positive_label")
    if str(wanted) not in names:
        raise ConfigError(f"{wanted!r} is not one of the labels ({', '.join(names)})", where="task.positive_label")
    return names.index(str(wanted))


def _label_names(train, data, multi: bool) -> tuple[list[str], bool]:
    """(label names, whether labels arrive as ids into them)."""
    feature = (train.features or {}).get(data.label_column)
    if multi and feature is not None:
        feature = getattr(feature, "feature", feature)  # a list of labels: the type of one
    class_label = type(feature).__name__ == "ClassLabel"
    # Integer labels with data.label_names are ids into that list, as a ClassLabel's are.
    ids_into_names = data.label_names is not None and str(getattr(feature, "dtype", "")).startswith("int")
    if class_label:
        names = list(feature.names)
        if data.label_names is not None and list(data.label_names) != names:
            raise ConfigError(f"the dataset's labels are {names}; data.label_names differs", where="data.label_names")
    elif data.label_names is not None:
        names = [str(n) for n in data.label_names]
    elif is_iterable(train):
        raise ConfigError("a streamed dataset's labels cannot be inferred up front; list them", where="data.label_names")
    else:
        if multi:
            values = {v for row in train[data.label_column] if row is not None for v in _as_list(row, "train")}
        else:
            values = {v for v in train.unique(data.label_column) if v is not None}
        names = sorted(str(v) for v in values) if not all(isinstance(v, int) for v in values) else [str(v) for v in sorted(values)]
    if len(names) < 2:
        raise DataError(f"need at least two labels, found {names}", where="data.label_column")
    return names, class_label or ids_into_names


def _as_list(value: Any, split: str) -> list:
    if not isinstance(value, list):
        raise DataError(f"multi_label needs a list of labels per row; the {split} split has {value!r}", where="data.label_column")
    return value


def _check_labels(ds, split: str, spec: Spec) -> bool:
    """True when every row has a known label, False when none has; a mix is an error."""
    if spec.label_column not in ds.column_names:
        return False
    if spec.problem_type == "multi_label":
        values = ds[spec.label_column]
        present = [_as_list(v, split) for v in values if v is not None]
        missing = len(values) - len(present)
    else:
        values = ds.unique(spec.label_column)
        missing = [v for v in values if v is None or (v == -1 and spec.problem_type == "single_label")]
        present = [v for v in values if v not in missing]
    if missing and present:
        raise DataError(f"some rows of the {split} split have no label", where="data.label_column")
    for value in present:
        if spec.problem_type == "regression" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DataError(f"regression needs numbers; the {split} split has {value!r}", where="data.label_column")
        if spec.problem_type != "regression":
            spec.to_target(value, split)
    return bool(present)


def spec_from_model(model_config, cfg, rows) -> Spec:
    """The spec of a trained model, for predicting on `rows` (gold labels used when present)."""
    problem_type = {hf: ours for ours, hf in PROBLEM_TYPES.items()}.get(model_config.problem_type, "single_label")
    names = [] if problem_type == "regression" else [model_config.id2label[i] for i in range(len(model_config.id2label))]
    data = cfg.data
    for column in (data.text_column, data.text_pair_column):
        if column is not None and column not in rows.column_names:
            raise column_error(column, rows, "input", "--text-column")
    spec = Spec(data.text_column, data.text_pair_column, data.label_column, names, problem_type)
    spec.labelled["test"] = _check_labels(rows, "input", spec)
    return spec


def texts(split, cfg) -> Iterator[str]:
    for row in split:
        for column in (cfg.data.text_column, cfg.data.text_pair_column):
            if column is not None and row.get(column):
                yield row[column]


def model_kwargs(spec: Spec) -> dict[str, Any]:
    if spec.problem_type == "regression":
        return {"num_labels": 1, "problem_type": PROBLEM_TYPES["regression"]}
    return {
        "num_labels": len(spec.label_names),
        "id2label": dict(enumerate(spec.label_names)),
        "label2id": spec.label2id,
        "problem_type": PROBLEM_TYPES[spec.problem_type],
    }


def preprocess(splits, tokenizer, cfg, spec: Spec):
    """Tokenize once with batched map; record each row's length for length-grouped batches."""
    data = cfg.data
    max_length = max_tokens(tokenizer, data)
    padding = "max_length" if data.pad_to_max_length else False

    def encode(batch, split: str, labelled: bool):
        texts = batch[spec.text_column]
        pairs = batch[spec.text_pair_column] if spec.text_pair_column else None
        for i, text in enumerate(texts):
            if not isinstance(text, str) or (pairs is not None and not isinstance(pairs[i], str)):
                raise BadRow(batch[ROW_ID][i], "has no text", "data.text_column")
        encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=padding)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        if labelled:
            encoded["labels"] = [spec.to_target(v, split) for v in batch[spec.label_column]]
        return encoded

    return tokenize_splits(splits, encode, data, spec.labelled)


def collator(tokenizer, cfg, spec: Spec, pad_to_multiple_of: int | None):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)


# ---------------------------------------------------------------------------------------------- metrics


def _sigmoid(logits):
    import numpy as np

    return 1 / (1 + np.exp(-logits))


def compute_metrics(eval_prediction, spec: Spec) -> dict[str, float]:
    if spec.problem_type == "regression":
        return _regression_metrics(eval_prediction.predictions.reshape(-1), eval_prediction.label_ids.reshape(-1))
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    gold = eval_prediction.label_ids
    if spec.problem_type == "multi_label":
        predicted = (_sigmoid(eval_prediction.predictions) >= THRESHOLD).astype(int)
        gold = gold.astype(int)
    else:
        predicted = eval_prediction.predictions.argmax(-1)
    metrics = {"accuracy": float(accuracy_score(gold, predicted))}  # multi_label: every label of the row right
    labels = list(range(len(spec.label_names)))
    if len(labels) == 2 and spec.problem_type == "single_label":
        p, r, f, _ = precision_recall_fscore_support(gold, predicted, average="binary", pos_label=spec.positive, zero_division=0)
        metrics.update(precision=float(p), recall=float(r), f1=float(f))
    else:
        averages = ("micro", "macro", "weighted") if spec.problem_type == "multi_label" else ("macro", "weighted")
        for average in averages:
            p, r, f, _ = precision_recall_fscore_support(gold, predicted, labels=labels, average=average, zero_division=0)
            metrics.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
        metrics["f1"] = metrics["f1_macro"]  # one name to gate promotion on, whatever the label count
    return metrics


def _regression_metrics(predicted, gold) -> dict[str, float]:
    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    mse = float(mean_squared_error(gold, predicted))
    constant = np.ptp(predicted) == 0 or np.ptp(gold) == 0  # correlation is undefined for a constant
    return {
        "mse": mse,
        "rmse": mse**0.5,
        "mae": float(mean_absolute_error(gold, predicted)),
        "r2": float(r2_score(gold, predicted)),
        "pearson": 0.0 if constant else float(pearsonr(gold, predicted)[0]),
        "spearman": 0.0 if constant else float(spearmanr(gold, predicted)[0]),
    }


def report(predict_output, spec: Spec) -> dict[str, Any]:
    from sklearn.metrics import classification_report, confusion_matrix, multilabel_confusion_matrix

    if predict_output.label_ids is None or spec.problem_type == "regression":
        return {}
    labels = list(range(len(spec.label_names)))
    gold = predict_output.label_ids
    if spec.problem_type == "multi_label":
        predicted = (_sigmoid(predict_output.predictions) >= THRESHOLD).astype(int)
        gold = gold.astype(int)
        # one [[tn, fp], [fn, tp]] per label, under its own name: it is no labels x labels matrix
        matrices = {"multilabel_confusion_matrix": multilabel_confusion_matrix(gold, predicted, labels=labels).tolist()}
    else:
        predicted = predict_output.predictions.argmax(-1)
        matrices = {"confusion_matrix": confusion_matrix(gold, predicted, labels=labels).tolist()}
    return {
        "labels": spec.label_names,
        **matrices,
        "classification_report": classification_report(
            gold, predicted, labels=labels, target_names=spec.label_names, output_dict=True, zero_division=0
        ),
    }


def prediction_rows(raw_test, predict_output, spec: Spec) -> Iterator[dict[str, Any]]:
    import numpy as np

    logits = predict_output.predictions
    if spec.problem_type == "multi_label":
        probabilities = _sigmoid(logits)
    elif spec.problem_type == "single_label":
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities = shifted / shifted.sum(-1, keepdims=True)
    gold = predict_output.label_ids
    for i, row in enumerate(raw_test):
        out = {"id": row[ROW_ID], "text": row[spec.text_column]}
        if spec.text_pair_column:
            out["text_pair"] = row[spec.text_pair_column]
        if spec.problem_type == "regression":
            out["label"] = float(gold[i]) if gold is not None else None
            out["predicted"] = float(logits[i].reshape(-1)[0])
            yield out
            continue
        if spec.problem_type == "multi_label":
            out["label"] = [spec.label_names[j] for j in np.flatnonzero(gold[i])] if gold is not None else None
            out["predicted"] = [spec.label_names[j] for j in np.flatnonzero(probabilities[i] >= THRESHOLD)]
        else:
            out["label"] = spec.label_names[int(gold[i])] if gold is not None else None
            out["predicted"] = spec.label_names[int(probabilities[i].argmax())]
        out["probabilities"] = {name: round(float(p), 6) for name, p in zip(spec.label_names, probabilities[i])}
        yield out
