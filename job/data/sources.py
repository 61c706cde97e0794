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

import logging
from importlib import resources

from job.config import DataConfig, JobConfig, is_builtin
from job.config.formats import DEMO_DATASETS, SPLITS
from job.data.files import expand, file_format, load_files
from job.data.read_errors import read
from job.data.rows import ROW_ID, column_error, is_iterable, records_hint, source_name
from job.errors import ConfigError, DataError, first_line

log = logging.getLogger(__name__)


def load_splits(cfg: JobConfig):
    """Load train/validation/test as a DatasetDict (train may be an IterableDataset when streaming)."""
    from datasets import DatasetDict

    data = cfg.data
    raw = _load_source(cfg)
    if "train" not in raw:
        raise DataError(f"no 'train' split (found: {', '.join(raw) or 'none'})", where=source_name(data))
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
            raise DataError(f"the {name} split is empty", where=source_name(data))
    sizes = ", ".join(f"{name}={'stream' if is_iterable(ds) else len(ds)}" for name, ds in splits.items())
    log.info("data: %s (%s)", source_name(data), sizes)
    return DatasetDict(splits) if not data.streaming else splits


def load_file(uri: str, cfg: JobConfig):
    """One file (or glob) as a single Dataset with row ids (for `finetune-job predict`)."""
    files = {"test": expand(uri, "--input", cfg)}
    ds = load_files(files, file_format(files, cfg.data), cfg, streaming=False)["test"]
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
        raise DataError(f"no 'train' split (found: {', '.join(streamed) or 'none'})", where=source_name(cfg.data))
    sample = {}
    for name in SPLITS:
        split = streamed.get(name, streamed["train"])
        rows = read(lambda: list(islice(iter(split), n)), cfg.data)
        if not rows:
            raise DataError(f"the {name} split is empty", where=source_name(cfg.data))
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
        return load_files(files, file_format(files, data), cfg, streaming)
    if data.dataset is not None:
        if is_builtin(data.dataset):
            raise ConfigError(f"unknown builtin dataset (choose: {', '.join(DEMO_DATASETS)})", where="data.dataset")
        return read(
            lambda: load_dataset(data.dataset, data.config_name, revision=data.revision, streaming=streaming),
            data,
        )
    files = {}
    for name in SPLITS:
        patterns = getattr(data, f"{name}_files")
        if patterns is not None:
            files[name] = expand(patterns, f"data.{name}_files", cfg)
    return load_files(files, file_format(files, data), cfg, streaming)


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
        raise DataError(f"train has {len(ds)} rows, too few to carve a {name} split{records_hint(ds)}", where=f"data.{name}_size")
    try:
        return ds.train_test_split(test_size=size, seed=seed)
    except ValueError as exc:
        raise DataError(first_line(exc), where=f"data.{name}_size") from exc


def _materialize(ds):
    from datasets import Dataset

    return Dataset.from_list(list(ds), features=ds.features)


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


