"""Level 1 of the job (../shared/LAYOUT.md): what a config is. May import job.errors only.

schema.py (the sections as dataclasses, allowed values), redacted.py (what may be shown: secrets
replaced), validation.py (settings that contradict each other), formats.py (the data formats and the
column defaults that follow them), training_args.py (the TrainingArguments pass-through's values),
env.py (the one module that reads os.environ), dated_paths.py ({date} windows in data paths).
The loader that reads files, the environment and --set into a JobConfig is job/cli/config_loader.py.
"""

from job.config.schema import (  # noqa: F401  the schema is what `from job.config import ...` means
    BUILTIN_PREFIX,
    CheckpointConfig,
    DataConfig,
    DistributedConfig,
    JobConfig,
    LoraConfig,
    ModelConfig,
    OutputConfig,
    PromotionConfig,
    RetentionConfig,
    S3Config,
    ScheduleConfig,
    TaskConfig,
    TrackingConfig,
    is_builtin,
)
