"""Level 4 of the job (../shared/LAYOUT.md): models. May import job.data, job.storage, job.config, job.errors;
never job.tasks (a sibling: the recipe hands the model to the task).

loading.py (the model to train, and published models loaded and saved), builtin.py (tiny models built
offline), gguf.py (llama.cpp files), pooled.py (body + pooled head, for head-only training), lora.py
(adapters through peft).
"""

from job.models.loading import (  # noqa: F401
    META_FILE,
    describe_model,
    download,
    load,
    load_published,
    meta,
    model_class,
    parameter_counts,
    resolve,
    save_published,
)
