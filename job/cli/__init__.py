"""Level 8 of the job (../shared/LAYOUT.md), the top: the `finetune-job` command. May import anything below.

root.py (the click root, exit codes, lazy subcommands; the console script is job.cli.root:entry),
options.py (the options every command shares), one module per command (run.py, check.py, predict.py,
show_config.py, champion.py, promote.py, rollback.py), logs.py (log lines, JSON or text, secrets
scrubbed), config_loader.py (files, the environment and --set read into a JobConfig: the one place
that needs both the schema and the task registry).
"""
