"""Level 5 of the job (../shared/LAYOUT.md): training. May import job.models, job.tasks and below.

trainers.py (the Trainer subclass and the job's defaults), features.py (features and collator: the step
every recipe shares), throughput.py (tokens/s, FLOPs, MFU),
checkpoints.py (save, upload, resume; the SIGTERM stop request), head_only.py (a head on cached
features of a frozen body), launch.py (one worker per GPU, or per node, under torch's elastic agent).
"""

from job.training.features import pad_multiple, prepare  # noqa: F401
from job.training.trainers import (  # noqa: F401
    MODE_DEFAULTS,
    arguments,
    evaluator,
    final_evaluation,
    on_gpu,
    predictor,
    progress_bars_wanted,
    quiet_libraries,
    trainer,
)
