"""The shipped demo data, one set per kind of task (written by `python -m job.demo.generate`), and each
task's demo config (job/demo/<task>.yaml), which the config loader lays under the user's values."""
