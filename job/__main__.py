"""`python -m job` is `finetune-job`."""

from job.cli.root import main

main()
