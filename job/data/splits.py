"""Raw datasets: where rows come from and how the three splits are formed.

Sources: a Hub dataset (`data.dataset`, with `config_name` and `revision`), the shipped demo data
(`builtin:*-demo`, one per kind of task), or files (`data.*_files`: local paths, globs, or s3:// URIs
read through the same S3 settings as the outputs; csv, tsv, json, parquet, text with one row per line,
or CoNLL token/tag columns). Files are read the same way by `run`, `check` and `predict`:

- TSV has no quoting (GLUE's files need it: a field may start with `"`): a line is a row, and a row
  count that differs from the file's lines is a data error, never rows silently merged. CSV follows
  RFC 4180 (quoted fields may hold commas and line breaks);
- `data.field` names the list of rows inside a wrapped JSON file (`{"version": ..., "data": [...]}`);
- a dotted column name (`translation.en`) reaches into a nested field: the splits are flattened;
- a `.txt` file laid out as CoNLL (`token<TAB>tag` lines) is not read as text without being asked.

The result always has `train`, `validation` and `test`:

- missing validation/test splits are carved from train with a seeded split, so the same config gives
  the same rows in every split on every run;
- every row carries `ROW_ID`: the `data.id_column` value, or the row's position (from 0) in the split
  it was read from, carved splits included. Predictions are keyed by it, so they can be matched to
  inputs whatever order a sampler or a set of workers used, and an error about a row names it by
  where it was read (`row_where`);
- with `data.streaming`, train stays an IterableDataset; validation and test are small and needed whole
  (for metrics and predictions), so they are read into memory.

Everything here is task-agnostic: which columns matter and what a label is belongs to the task.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import glob
import logging
import os
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from job import storage, windows
from job.config import DataConfig, JobConfig, is_builtin
from job.errors import ConfigError, DataError, JobError, StorageError

log = logging.getLogger(__name__)

ROW_ID = "__row_id"
SPLITS = ("train", "validation", "test")
# The shipped demo data (job/demo/, written by job/demo/generate.py): each split's file in the package.
DEMO_DATASETS = {
    "builtin:sentiment-demo": "reviews.{split}.jsonl",  # text-classification
    "builtin:ner-demo": "entities.{split}.conll",  # token-classification
    "builtin:translation-demo": "translation.{split}.jsonl",  # seq2seq
    "builtin:stories-demo": "stories.{split}.txt",  # the language-model tasks
}
_EXTENSIONS = {
    ".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text", ".conll": "conll",
}
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
CONLL_TOKENS, CONLL_TAGS = "tokens", "tags"  # the columns a CoNLL file is read into
_EMPTY_SPLIT = re.compile(r'Instruction "(\w+)" corresponds to no data')


def load_splits(cfg: JobConfig):
    """Load train/validation/test as a DatasetDict (train may be an IterableDataset when streaming)."""
    from datasets import DatasetDict

    data = cfg.data
    raw = _load_source(cfg)
    if "train" not in raw:
        raise DataError(f"no 'train' split (found: {', '.join(raw) or 'none'})", where=_source_name(data))
    splits = reach_nested({name: raw[name] for name in SPLITS if name in raw}, data)
    if data.streaming:
        for name in ("validation", "test"):
            if name not in splits:
                raise ConfigError(
                    f"a streamed dataset cannot be carved; give a {name} split (data.{name}_files)",
                    where="data.streaming",
                )
            splits[name] = _materialize(splits[name])
    splits = {name: _with_row_ids(ds, data.id_column, name) for name, ds in splits.items()}
    if not data.streaming:
        splits = _carve_missing(splits, data, cfg.seed)
    splits = {name: splits[name] for name in SPLITS}
    limits = {"train": data.max_train_samples, "validation": data.max_eval_samples, "test": data.max_predict_samples}
    for name, limit in limits.items():
        if limit is not None:
            ds = splits[name]
            splits[name] = ds.take(limit) if is_iterable(ds) else ds.select(range(min(limit, len(ds))))
    for name, ds in splits.items():
        if not is_iterable(ds) and len(ds) == 0:
            raise DataError(f"the {name} split is empty", where=_source_name(data))
    sizes = ", ".join(f"{name}={'stream' if is_iterable(ds) else len(ds)}" for name, ds in splits.items())
    log.info("data: %s (%s)", _source_name(data), sizes)
    return DatasetDict(splits) if not data.streaming else splits


def load_file(uri: str, cfg: JobConfig):
    """One file (or glob) as a single Dataset with row ids (for `finetune-job predict`)."""
    files = {"test": _expand(uri, "--input", cfg)}
    ds = _load_files(files, _file_format(files, cfg.data), cfg, streaming=False)["test"]
    if len(ds) == 0:
        raise DataError("the input has no rows", where=uri)
    return _with_row_ids(reach_nested({"test": ds}, cfg.data)["test"], cfg.data.id_column, "input")


def sample_splits(cfg: JobConfig, n: int = 8):
    """The first `n` rows of each split, read by streaming (for `finetune-job check`).

    Splits that would be carved from train are stood in for by the train sample."""
    from itertools import islice

    from datasets import Dataset, DatasetDict

    streamed = _load_source(cfg, streaming=True)
    if "train" not in streamed:
        raise DataError(f"no 'train' split (found: {', '.join(streamed) or 'none'})", where=_source_name(cfg.data))
    sample = {}
    for name in SPLITS:
        split = streamed.get(name, streamed["train"])
        rows = _read(lambda: list(islice(iter(split), n)), cfg.data)
        if not rows:
            raise DataError(f"the {name} split is empty", where=_source_name(cfg.data))
        sample[name] = Dataset.from_list(rows, features=split.features, split=split.split)
    sample = reach_nested(sample, cfg.data)
    return DatasetDict({name: _with_row_ids(ds, cfg.data.id_column, name) for name, ds in sample.items()})


# ---------------------------------------------------------------------------------------------- sources


def _load_source(cfg: JobConfig, streaming: bool | None = None):
    from datasets import load_dataset

    data = cfg.data
    streaming = data.streaming if streaming is None else streaming
    if data.dataset in DEMO_DATASETS:
        demo = resources.files("job") / "demo"
        files = {name: [str(demo / DEMO_DATASETS[data.dataset].format(split=name))] for name in SPLITS}
        return _load_files(files, _file_format(files, data), cfg, streaming)
    if data.dataset is not None:
        if is_builtin(data.dataset):
            raise ConfigError(f"unknown builtin dataset (choose: {', '.join(DEMO_DATASETS)})", where="data.dataset")
        return _read(
            lambda: load_dataset(data.dataset, data.config_name, revision=data.revision, streaming=streaming),
            data,
        )
    files = {}
    for name in SPLITS:
        patterns = getattr(data, f"{name}_files")
        if patterns is not None:
            files[name] = _expand(patterns, f"data.{name}_files", cfg)
    return _load_files(files, _file_format(files, data), cfg, streaming)


def _load_files(files: dict[str, list[str]], fmt: str, cfg: JobConfig, streaming: bool):
    """Each split's files as one dataset, read the same way for run, check and predict."""
    from datasets import load_dataset

    data = cfg.data
    kwargs: dict[str, Any] = {}
    if any(path.startswith("s3://") for paths in files.values() for path in paths):
        kwargs["storage_options"] = dict(storage.fsspec_options(cfg.s3))
    if fmt == "conll":
        return _read(lambda: _load_conll(files, kwargs, streaming), data)
    if fmt == "text" and data.format is None:
        with storage_faults(data):
            _refuse_conll_layout(files, kwargs.get("storage_options", {}))
    options: dict[str, Any] = {"field": data.field} if data.field is not None else {}
    if fmt == "tsv":  # as GLUE's own loader reads its files: no quotes, a line is a row
        options.update(delimiter="\t", quoting=csv.QUOTE_NONE)
    builder = "csv" if fmt == "tsv" else fmt
    with _bucket_reads_allowed(kwargs):
        # load_dataset adds keys to the storage_options it is given: hand it a copy.
        fresh = {key: dict(value) for key, value in kwargs.items()}
        loaded = _read(lambda: load_dataset(builder, data_files=files, streaming=streaming, **options, **fresh), data)
    if fmt == "tsv" and not streaming:
        for split, paths in files.items():
            with storage_faults(data):
                _check_row_count(loaded[split], paths, kwargs.get("storage_options", {}), _source_name(data, split))
    return loaded


def _check_row_count(ds, paths: list[str], options: dict, where: str) -> None:
    """A TSV row is one line: rows that differ from the lines of data (a carriage return inside a
    field, or a reader that took quotes) would be rows lost or split without a word."""
    import fsspec

    lines = 0
    for path in paths:
        with fsspec.open(path, "rb", compression="infer", **options) as f:
            filled = sum(1 for line in f if line.strip(b"\r\n"))
        lines += max(filled - 1, 0)  # the header
    if len(ds) != lines:
        raise DataError(
            f"read {len(ds)} rows from {lines} lines of data (a TSV row is one line: a stray carriage return or "
            "an unescaped line break inside a field?)",
            where=where,
        )


def _refuse_conll_layout(files: dict[str, list[str]], options: dict) -> None:
    """A `.txt` of `token<TAB>tag` lines is CoNLL data, not a text per line: say how to read it."""
    for paths in files.values():
        for path in paths[:1]:
            if _looks_like_conll(path, options):
                raise ConfigError(
                    f"{path} is laid out as CoNLL (token<TAB>tag lines, blank lines between sentences): set "
                    "data.format: conll to read its words and tags, or data.format: text to read a row per line",
                    where="data.format",
                )


def _looks_like_conll(path: str, options: dict, probe: int = 200) -> bool:
    filled = []
    for number, line in _conll_lines(path, options):
        if line.strip():
            filled.append(line.rstrip("\r\n"))
        if number >= probe:
            break
    fields = [line.split("\t") for line in filled]
    return len(filled) >= 2 and all(len(f) >= 2 and all(part.strip() and " " not in part.strip() for part in f) for f in fields)


def _file_format(files: dict[str, list[str]], data: DataConfig) -> str:
    fmt = data.format or _infer_format(files)
    if fmt == "csv" and all(_suffix(p) == ".tsv" for paths in files.values() for p in paths):
        return "tsv"  # data.format: csv named before tsv was a format of its own
    return fmt


def _suffix(path: str) -> str:
    for compression in _COMPRESSIONS:
        path = path.removesuffix(compression)
    suffixes = Path(path).suffixes
    return suffixes[-1].lower() if suffixes else ""


def declared_format(data: DataConfig) -> str | None:
    """The format data.format names or every file name says; None for a dataset, or when the names
    do not tell (config.py sets column defaults from it before anything is read)."""
    if data.dataset in DEMO_DATASETS:
        return _EXTENSIONS.get(_suffix(DEMO_DATASETS[data.dataset]))
    if data.format is not None or data.dataset is not None:
        return data.format if data.dataset is None else None
    formats = set()
    for split in SPLITS:
        patterns = getattr(data, f"{split}_files")
        for pattern in [patterns] if isinstance(patterns, str) else patterns or []:
            formats.add(_EXTENSIONS.get(_suffix(pattern)))
    return formats.pop() if len(formats) == 1 else None


def _load_conll(files: dict[str, list[str]], kwargs: dict, streaming: bool):
    """CoNLL files as rows {tokens: [...], tags: [...]}: one `token<TAB>tag` per line (or whitespace-
    separated columns: the first is the token, the last the tag, as in CoNLL-2003), sentences separated
    by blank lines. A file with one column throughout has no tags (input to predict). Read here because
    datasets has no CoNLL builder; held in memory unless streaming (NER files are small)."""
    from datasets import Dataset, DatasetDict, Features, IterableDataset, IterableDatasetDict, List, Value

    options = kwargs.get("storage_options", {})
    splits = {}
    for name, paths in files.items():
        labelled = {_conll_has_tags(path, options) for path in paths}
        if len(labelled) > 1:
            raise DataError("some files have tags and some do not; give every file of a split the same columns", where=f"data.{name}_files")
        columns = [CONLL_TOKENS, CONLL_TAGS] if labelled.pop() else [CONLL_TOKENS]
        features = Features({column: List(Value("string")) for column in columns})
        if streaming:
            splits[name] = IterableDataset.from_generator(
                _conll_rows, gen_kwargs={"paths": paths, "options": options}, features=features
            )
        else:
            rows = list(_conll_rows(paths, options))
            splits[name] = Dataset.from_dict({c: [row[c] for row in rows] for c in columns}, features=features)
    return IterableDatasetDict(splits) if streaming else DatasetDict(splits)


def _conll_lines(path: str, options: dict):
    import fsspec

    with fsspec.open(path, "rt", encoding="utf-8", compression="infer", **options) as f:
        yield from enumerate(f, start=1)


def _conll_has_tags(path: str, options: dict) -> bool:
    for _, line in _conll_lines(path, options):
        if line.strip():
            return len(_conll_fields(line)) > 1
    raise DataError("no tokens in this file", where=path)


def _conll_fields(line: str) -> list[str]:
    line = line.rstrip()  # as HF's wnut_17 loader does
    return line.split("\t") if "\t" in line else line.split()


def _conll_rows(paths: list[str], options: dict):
    """Sentences of one split. Separator lines are blank or, in WNUT-17, a lone TAB: `strip() == ""`."""
    for path in paths:
        tokens: list[str] = []
        tags: list[str] = []
        labelled = _conll_has_tags(path, options)
        for number, line in _conll_lines(path, options):
            if not line.strip() or line.startswith("-DOCSTART-"):
                if tokens:
                    yield {CONLL_TOKENS: tokens, CONLL_TAGS: tags} if labelled else {CONLL_TOKENS: tokens}
                tokens, tags = [], []
                continue
            fields = _conll_fields(line)
            if (len(fields) > 1) != labelled:
                shape = "token<TAB>tag" if labelled else "a token alone"
                raise DataError(f"expected {shape}, as on the file's first line; got {line.strip()!r}", where=f"{path}:{number}")
            tokens.append(fields[0])
            tags.append(fields[-1])
        if tokens:
            yield {CONLL_TOKENS: tokens, CONLL_TAGS: tags} if labelled else {CONLL_TOKENS: tokens}


@contextlib.contextmanager
def _bucket_reads_allowed(kwargs: dict):
    """datasets refuses every remote file, s3:// included, under HF_HUB_OFFLINE. The user's own bucket
    is not the Hub: lift that flag (datasets' copy only) while reading explicit s3:// data files."""
    from datasets import config as datasets_config

    if "storage_options" not in kwargs or not datasets_config.HF_HUB_OFFLINE:
        yield
        return
    datasets_config.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        datasets_config.HF_HUB_OFFLINE = True


def _expand(patterns: str | list[str], key: str, cfg: JobConfig) -> list[str]:
    """Resolve globs now, so a pattern that matches nothing is named in the error. Paths that name
    the run's date (`{date-1d}`, `{date-6d..date}`) are resolved by job/windows.py first."""
    paths: list[str] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        if windows.is_template(pattern):
            paths.extend(windows.expand(pattern, key, cfg, lambda concrete: _match(concrete, cfg)))
            continue
        matched = _match(pattern, cfg)
        if not matched:
            raise DataError("no file matches", where=f"{key}: {pattern}")
        paths.extend(matched)
    return paths


def _match(pattern: str, cfg: JobConfig) -> list[str]:
    if pattern.startswith("s3://"):
        return storage.glob_s3(pattern, cfg.s3)
    matched = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    matched = [p for p in matched if os.path.isfile(p)]
    for path in matched:
        if not os.access(path, os.R_OK):
            raise DataError("file is not readable", where=path)
    return matched


def _infer_format(files: dict[str, list[str]]) -> str:
    formats = set()
    for paths in files.values():
        for path in paths:
            fmt = _EXTENSIONS.get(_suffix(path))
            if fmt is None:
                raise ConfigError(f"cannot tell the format of {path}; set data.format (csv, tsv, json, parquet, text or conll)", where="data.format")
            formats.add(fmt)
    if len(formats) > 1:
        raise ConfigError(f"files mix formats ({', '.join(sorted(formats))}); use one format", where="data.format")
    return formats.pop()


class _Held(logging.Handler):
    """Holds datasets' own error lines while it loads: they name the file at fault, so our one
    error line can name it too, and they are not printed next to ours."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def file_at_fault(self) -> str | None:
        for message in reversed(self.messages):
            found = re.search(r"file '([^']+)'", message)
            if found:
                return found.group(1)
        return None


def _read(load, data: DataConfig):
    """Run a datasets call, turning its failures into one-line data or storage errors."""
    from datasets.exceptions import DatasetNotFoundError

    datasets_log, held = logging.getLogger("datasets"), _Held()
    datasets_log.addHandler(held)
    propagate, datasets_log.propagate = datasets_log.propagate, False
    where = _source_name(data)
    try:
        with storage_faults(data, held.file_at_fault):
            return load()
    except (DataError, ConfigError, StorageError):
        raise
    except DatasetNotFoundError as exc:
        raise DataError(f"dataset not found ({_first_line(exc)})", where=where) from exc
    except PermissionError as exc:
        raise StorageError(f"access denied ({_first_line(exc)})", where=where) from exc
    except ConnectionError as exc:
        offline = " (HF_HUB_OFFLINE is set)" if _offline() else ""
        raise DataError(f"cannot reach the dataset{offline}: {_first_line(exc)}", where=where) from exc
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise DataError(f"not found ({_first_line(exc)})", where=where) from exc
    except Exception as exc:  # pyarrow/json/csv parse errors arrive wrapped in several layers
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, PermissionError):
            raise StorageError(f"access denied ({_first_line(cause)})", where=where) from exc
        empty = _EMPTY_SPLIT.search(str(cause))
        if empty:  # datasets' words for a split whose files hold no rows
            split = empty.group(1)
            raise DataError(f"the {split} split is empty", where=_source_name(data, split)) from exc
        where = held.file_at_fault() or where
        raise DataError(f"cannot read ({type(cause).__name__}: {_first_line(cause)})", where=where) from exc
    finally:
        datasets_log.removeHandler(held)
        datasets_log.propagate = propagate
        for message in held.messages if sys.exc_info()[0] is None else []:
            log.error("datasets: %s", message)


@contextlib.contextmanager
def storage_faults(data: DataConfig, file_at_fault=lambda: None):
    """A bucket that fails while its files are read (here, or a stream read while training) is a
    storage error: exit 6, which Kubernetes retries, not exit 4 for bad data."""
    try:
        yield
    except Exception as exc:
        fault = storage.fault_behind(exc) if data.dataset is None and not isinstance(exc, JobError) else None
        if fault is None:
            raise
        where = file_at_fault() or _source_name(data)
        raise StorageError(f"cannot read ({type(fault).__name__}: {_first_line(fault)})", where=where) from exc


def _offline() -> bool:
    from job import env

    return env.hub_offline()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _source_name(data: DataConfig, split: str = "train") -> str:
    """What an error about the data names: the Hub dataset, else the split's files (train's when the
    split has none of its own)."""
    if data.dataset is not None:
        return data.dataset
    key = split if getattr(data, f"{split}_files", None) is not None else "train"
    files = getattr(data, f"{key}_files")
    return f"data.{key}_files: {files if isinstance(files, str) else ', '.join(files or [])}"


# ---------------------------------------------------------------------------------------------- splits


def _with_row_ids(ds, id_column: str | None, split: str):
    if id_column is not None and id_column not in (ds.column_names or []):
        raise column_error(id_column, ds, split, "data.id_column")
    if not is_iterable(ds):
        ids = [str(v) for v in ds[id_column]] if id_column is not None else list(range(len(ds)))
        return ds.add_column(ROW_ID, ids)
    from datasets import Features, Value

    # map() forgets a stream's features unless told them; later steps need the column names.
    kind = Value("string") if id_column is not None else Value("int64")
    features = Features({**ds.features, ROW_ID: kind}) if ds.features else None
    if id_column is not None:
        return ds.map(lambda row: {ROW_ID: str(row[id_column])}, features=features)
    return ds.map(lambda _, i: {ROW_ID: i}, with_indices=True, features=features)


def _carve_missing(splits: dict, data: DataConfig, seed: int) -> dict:
    """Seeded carving: the same seed and data give the same split membership on every run."""
    train = splits["train"]
    if "test" not in splits:
        parts = _split(train, data.test_size, seed, "test")
        train, splits["test"] = parts["train"], parts["test"]
        log.info("data: no test split, carved %d rows (%.0f%%) from train with seed %d", len(splits["test"]), data.test_size * 100, seed)
    if "validation" not in splits:
        parts = _split(train, data.validation_size, seed, "validation")
        train, splits["validation"] = parts["train"], parts["test"]
        log.info("data: no validation split, carved %d rows from train with seed %d", len(splits["validation"]), seed)
    splits["train"] = train
    return splits


def _split(ds, size: float, seed: int, name: str):
    if len(ds) < 3:
        raise DataError(f"train has {len(ds)} rows, too few to carve a {name} split{_records_hint(ds)}", where=f"data.{name}_size")
    try:
        return ds.train_test_split(test_size=size, seed=seed)
    except ValueError as exc:
        raise DataError(_first_line(exc), where=f"data.{name}_size") from exc


def _materialize(ds):
    from datasets import Dataset

    return Dataset.from_list(list(ds), features=ds.features)


def is_iterable(ds) -> bool:
    from datasets import IterableDataset

    return isinstance(ds, IterableDataset)


def _columns(ds) -> str:
    return ", ".join(c for c in ds.column_names or [] if c != ROW_ID) or "unknown"


def _records_hint(ds) -> str:
    """A wrapped JSON file reads as one row whose column holds the real rows: name the key to read."""
    for name, feature in (ds.features or {}).items():
        inner = getattr(feature, "feature", None)
        if isinstance(inner, dict) or (isinstance(feature, list) and feature and isinstance(feature[0], dict)):
            return f"; column '{name}' holds a list of records: set data.field: {name} to read them as rows"
    return ""


def reach_nested(splits: dict, data: DataConfig) -> dict:
    """Flatten splits whose nested fields a configured column names with dots (`translation.en`, as
    datasets' flatten() names them); other splits stay as they are."""
    wanted = [c for c in (data.text_column, data.text_pair_column, data.label_column, data.id_column) if c and "." in c]
    out = {}
    for name, ds in splits.items():
        columns = ds.column_names or []
        if any(c not in columns and c.split(".")[0] in columns for c in wanted):
            ds = ds.map(_flat_row) if is_iterable(ds) else ds.flatten()
        elif not columns and wanted and is_iterable(ds):  # a stream whose columns are not known yet
            ds = ds.map(_flat_row)
        out[name] = ds
    return out


def _flat_row(row: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(_flat_row(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
        return f"the row with {data.id_column} {row_id!r} ({_source_name(data, origin)})"
    if data.dataset is not None:
        return f"row {row_id} of the {origin} split of {data.dataset}"
    return f"row {row_id} (from 0) of {_source_name(data, origin)}"


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
    return DataError(f"column '{column}' is not in the {split} split (columns: {_columns(ds)}){_records_hint(ds)}", where=key)
