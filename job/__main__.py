"""`python -m job` is `finetune-job`."""

from job.cli.root import entry

entry()
