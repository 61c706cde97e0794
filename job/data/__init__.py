"""Level 3 of the job (../shared/LAYOUT.md): raw datasets. May import job.storage, job.config, job.errors.

sources.py (where rows come from and how train/validation/test are formed), files.py (csv, tsv, json,
parquet, text, CoNLL; globs, s3://, {date} windows), read_errors.py (loader failures as one-line data
or storage errors), rows.py (what tasks import, and all they import of data: row ids, row-naming
errors, batched tokenization). Nothing is imported here, so `import job.data.rows` stays small.
"""
