"""Rows as the tasks see them: the row id every row carries, errors that name where a row was read,
and the batched tokenization every task runs. Tasks import this module only, not the loaders or storage."""

from __future__ import annotations

import contextlib
import functools

from job.config import DataConfig
from job.config.formats import SPLITS
from job.errors import DataError

ROW_ID = "__row_id"


def source_name(data: DataConfig, split: str = "train") -> str:
    """What an error about the data names: the Hub dataset, else the split's files (train's when the
    split has none of its own)."""
    if data.dataset is not None:
        return data.dataset
    key = split if getattr(data, f"{split}_files", None) is not None else "train"
    files = getattr(data, f"{key}_files")
    return f"data.{key}_files: {files if isinstance(files, str) else ', '.join(files or [])}"


def is_iterable(ds) -> bool:
    from datasets import IterableDataset

    return isinstance(ds, IterableDataset)


def columns(ds) -> str:
    return ", ".join(c for c in ds.column_names or [] if c != ROW_ID) or "unknown"


def records_hint(ds) -> str:
    """A wrapped JSON file reads as one row whose column holds the real rows: name the key to read."""
    for name, feature in (ds.features or {}).items():
        inner = getattr(feature, "feature", None)
        if isinstance(inner, dict) or (isinstance(feature, list) and feature and isinstance(feature[0], dict)):
            return f"; column '{name}' holds a list of records: set data.field: {name} to read them as rows"
    return ""


class BadRow(Exception):
    """Raised by a task about one row (`row_id`, what is wrong, the config key to look at); turned into
    a DataError that names where the row was read (`naming_rows`, `rows_named`): a carved validation
    row is a row of the train files, not 'row 5' of a 1-row split."""

    def __init__(self, row_id, problem: str, key: str):
        super().__init__(row_id, problem, key)
        self.row_id, self.problem, self.key = row_id, problem, key

    def error(self, origin: str, data: DataConfig) -> DataError:
        return DataError(f"{row_where(self.row_id, origin, data)} {self.problem}", where=self.key)


@contextlib.contextmanager
def naming_rows(ds, split: str, data: DataConfig):
    """BadRow about a row of `ds` (the `split` split) -> DataError naming where the row was read."""
    try:
        yield
    except BadRow as bad:
        raise bad.error(_origin(ds, split), data) from None


def rows_named(encode, ds, split: str, data: DataConfig):
    """`encode` for ds.map, its BadRow errors turned into DataErrors inside the map (a stream maps
    lazily, while training; worker processes of num_proc raise in their own process)."""
    return functools.partial(_encode_naming_rows, encode=encode, origin=_origin(ds, split), data=data)


def _encode_naming_rows(batch, encode, origin: str, data: DataConfig, **kwargs):
    try:
        return encode(batch, **kwargs)
    except BadRow as bad:
        raise bad.error(origin, data) from None


def _origin(ds, split: str) -> str:
    """The split a dataset's rows were read from (datasets keeps it through carving and map)."""
    origin = str(getattr(ds, "split", None) or "")
    return origin if origin in SPLITS else split


def row_where(row_id, origin: str, data: DataConfig) -> str:
    """A row as an error names it: its data.id_column value, else its position (from 0, as `id` in
    predictions.jsonl) among the rows read for the `origin` split."""
    if data.id_column is not None:
        return f"the row with {data.id_column} {row_id!r} ({source_name(data, origin)})"
    if data.dataset is not None:
        return f"row {row_id} of the {origin} split of {data.dataset}"
    return f"row {row_id} (from 0) of {source_name(data, origin)}"


def max_tokens(tokenizer, data: DataConfig) -> int:
    """Where every task truncates an input: data.max_length, else the tokenizer's limit up to 512
    (some tokenizers report a limit of 10^30)."""
    return data.max_length or min(tokenizer.model_max_length, 512)


def tokenize_splits(splits, encode, data: DataConfig, labelled: dict[str, bool]) -> dict:
    """Map `encode(batch, split, labelled)` over every split once, batched (datasets caches the
    result); of the raw columns only ROW_ID stays, since predictions are keyed by it."""
    out = {}
    for split, ds in splits.items():
        remove = [c for c in (ds.column_names or []) if c != ROW_ID]
        kwargs = {} if is_iterable(ds) else {"num_proc": data.num_proc, "desc": f"tokenize {split}"}
        out[split] = ds.map(
            rows_named(encode, ds, split, data), batched=True, remove_columns=remove,
            fn_kwargs={"split": split, "labelled": labelled.get(split, True)}, **kwargs,
        )
    return out


def require_columns(splits, data: DataConfig, *input_keys: str) -> None:
    """The configured input columns (`data.<key>`) must be in every split, the label column in every
    split but test (a test split may come without labels). A stream whose columns are not known yet
    is not checked."""
    for split, ds in splits.items():
        columns = ds.column_names or []
        if not columns:
            continue
        for key in input_keys:
            column = getattr(data, key)
            if column is not None and column not in columns:
                raise column_error(column, ds, split, f"data.{key}")
        if split != "test" and data.label_column not in columns:
            raise column_error(data.label_column, ds, split, "data.label_column")


def column_error(column: str, ds, split: str, key: str) -> DataError:
    """The error for a configured column that a split lacks, listing the columns it has."""
    return DataError(f"column '{column}' is not in the {split} split (columns: {columns(ds)}){records_hint(ds)}", where=key)
