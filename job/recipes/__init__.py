"""Level 7 of the job (../shared/LAYOUT.md): recipes that read top to bottom. May import job.retraining
and below, never job.cli.

run.py (one fine-tuning run: config -> data -> task -> model -> training -> storage), check.py (the
preflight: config, a few rows, the output, the model), predict.py (batch inference with a published
model), report.py (report.html and its plots).
"""
