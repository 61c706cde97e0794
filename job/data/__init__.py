"""Level 3 of the job (../shared/LAYOUT.md): raw datasets. May import job.storage, job.config, job.errors.

splits.py (where rows come from and how train/validation/test are formed), files.py (csv, tsv, json,
parquet, text, CoNLL; globs, s3://, {date} windows), read_errors.py (loader failures as one-line data
or storage errors), rows.py (what tasks import: row ids, row-naming errors, batched tokenization).
"""

from job.data.read_errors import storage_faults  # noqa: F401
from job.data.rows import ROW_ID, is_iterable  # noqa: F401
from job.data.splits import load_file, load_splits, sample_splits  # noqa: F401
