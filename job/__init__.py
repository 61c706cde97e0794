"""finetune-job: fine-tune Hugging Face models as a batch job. The run reads top to bottom in job/run.py."""
