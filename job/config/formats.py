"""The data formats the job reads, told from `data.format` or the file names before anything is read,
so the config loader can set format-dependent column defaults (a CoNLL file is read into tokens and
tags) and job/data/ can pick its reader."""

from __future__ import annotations

from pathlib import Path

from job.config.schema import DataConfig

FILE_FORMATS = ("csv", "tsv", "json", "parquet", "text", "conll")
# Column defaults that follow the data's format: a CoNLL file is read into tokens and tags.
FORMAT_COLUMNS = {"conll": {"text_column": "tokens", "label_column": "tags"}}
SPLITS = ("train", "validation", "test")
# The shipped demo data (job/demo/, written by job/demo/generate.py): each split's file in the package.
DEMO_DATASETS = {
    "builtin:sentiment-demo": "reviews.{split}.jsonl",  # text-classification
    "builtin:ner-demo": "entities.{split}.conll",  # token-classification
    "builtin:translation-demo": "translation.{split}.jsonl",  # seq2seq
    "builtin:stories-demo": "stories.{split}.txt",  # the language-model tasks
}
EXTENSIONS = {
    ".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text", ".conll": "conll",
}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


def suffix(path: str) -> str:
    """The extension that names the format: `train.jsonl.gz` -> `.jsonl`."""
    for compression in COMPRESSIONS:
        path = path.removesuffix(compression)
    suffixes = Path(path).suffixes
    return suffixes[-1].lower() if suffixes else ""


def declared_format(data: DataConfig) -> str | None:
    """The format data.format names or every file name says; None for a dataset, or when the names
    do not tell (the config loader sets column defaults from it before anything is read)."""
    if data.dataset in DEMO_DATASETS:
        return EXTENSIONS.get(suffix(DEMO_DATASETS[data.dataset]))
    if data.format is not None or data.dataset is not None:
        return data.format if data.dataset is None else None
    formats = set()
    for split in SPLITS:
        patterns = getattr(data, f"{split}_files")
        for pattern in [patterns] if isinstance(patterns, str) else patterns or []:
            formats.add(EXTENSIONS.get(suffix(pattern)))
    return formats.pop() if len(formats) == 1 else None
