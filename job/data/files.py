"""Data files as datasets: csv, tsv (no quoting, its row count checked), json (with data.field),
parquet, text and CoNLL; globs and s3:// URIs (listed with the job's retries), {date} dated_paths."""

from __future__ import annotations

import contextlib
import csv
import glob
import os
from typing import Any

from job import storage
from job.config import DataConfig, JobConfig, dated_paths
from job.config.formats import EXTENSIONS, suffix
from job.data.read_errors import read, storage_faults
from job.data.rows import source_name
from job.errors import ConfigError, DataError

CONLL_TOKENS, CONLL_TAGS = "tokens", "tags"  # the columns a CoNLL file is read into


def load_files(files: dict[str, list[str]], fmt: str, cfg: JobConfig, streaming: bool):
    """Each split's files as one dataset, read the same way for run, check and predict."""
    from datasets import load_dataset

    data = cfg.data
    kwargs: dict[str, Any] = {}
    if any(path.startswith("s3://") for paths in files.values() for path in paths):
        kwargs["storage_options"] = dict(storage.fsspec_options(cfg.s3))
    if fmt == "conll":
        return read(lambda: _load_conll(files, kwargs, streaming), data)
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
        loaded = read(lambda: load_dataset(builder, data_files=files, streaming=streaming, **options, **fresh), data)
    if fmt == "tsv" and not streaming:
        for split, paths in files.items():
            with storage_faults(data):
                _check_row_count(loaded[split], paths, kwargs.get("storage_options", {}), source_name(data, split))
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


def file_format(files: dict[str, list[str]], data: DataConfig) -> str:
    fmt = data.format or _infer_format(files)
    if fmt == "csv" and all(suffix(p) == ".tsv" for paths in files.values() for p in paths):
        return "tsv"  # data.format: csv named before tsv was a format of its own
    return fmt


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


def expand(patterns: str | list[str], key: str, cfg: JobConfig) -> list[str]:
    """Resolve globs now, so a pattern that matches nothing is named in the error. Paths that name
    the run's date (`{date-1d}`, `{date-6d..date}`) are resolved by job/config/dated_paths.py first."""
    paths: list[str] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        if dated_paths.is_template(pattern):
            paths.extend(dated_paths.expand(pattern, key, cfg, lambda concrete: _match(concrete, cfg)))
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
            fmt = EXTENSIONS.get(suffix(path))
            if fmt is None:
                raise ConfigError(f"cannot tell the format of {path}; set data.format (csv, tsv, json, parquet, text or conll)", where="data.format")
            formats.add(fmt)
    if len(formats) > 1:
        raise ConfigError(f"files mix formats ({', '.join(sorted(formats))}); use one format", where="data.format")
    return formats.pop()
