"""`python -m job` is `finetune-job`."""

from job.cli import main

main()
