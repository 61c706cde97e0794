"""finetune-job: fine-tune Hugging Face models as a batch job.

Folders by concern, imports pointing one way down (../shared/LAYOUT.md, kept by tests/test_layers.py):
errors < config < storage < data < models, tasks < training < retraining < recipes < cli.
The run reads top to bottom in job/recipes/run.py.
"""
