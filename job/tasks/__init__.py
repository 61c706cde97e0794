"""Level 4 of the job (../shared/LAYOUT.md): tasks, one flat module per kind of fine-tuning, all behind
the same small interface. May import job.data.rows, job.config and job.errors; never job.models (a sibling:
the recipe hands the model to the task).

A task module provides (no base class; the recipe in job/recipes/run.py calls these names):

    Settings                 dataclass of the task's own `task:` settings (validated with the config)
    MODEL_CLASS              name of the transformers class (an Auto class where one fits) that builds
                             or loads the model
    BUILTIN_MODEL            the builtin:* model the task trains when `model.name` is left out
    PROMOTION_METRIC         the metric the promotion gate compares when `promotion.metric` is left out
    inspect(splits, cfg)     check the columns and labels of the raw splits -> `spec`, everything the
                             later steps need to know about the data (label names, which splits have
                             gold labels); raises DataError naming the column or label
    spec_from_model(model_config, cfg, rows) -> spec, for `finetune-job predict`: the labels come
                             from the trained model, the columns from the input `rows`
    texts(split, cfg)        an iterator of strings, to train a builtin model's tokenizer
    model_kwargs(spec)       config keyword arguments for the model (e.g. num_labels, id2label)
    preprocess(splits, tokenizer, cfg, spec)
                             tokenized splits with a `length` column, done once with batched map; the
                             test split keeps ROW_ID, one feature row per input row (language
                             models cut training text into blocks that are no one row)
    collator(tokenizer, cfg, spec, pad_to_multiple_of)
    compute_metrics(eval_prediction, spec) -> dict of floats (Trainer adds eval_/test_ prefixes)
    report(predict_output, spec) -> dict of non-scalar test metrics (confusion matrix, per-class report)
    prediction_rows(raw_test, predict_output, spec) -> iterator of JSON-ready dicts, one per test row

and, only when it needs them (job/training/trainers.py reads these with getattr):

    TRAINER                  (Trainer class, TrainingArguments class) names to build on instead of
                             Trainer/TrainingArguments, e.g. seq2seq's Seq2SeqTrainer, which generates
    training_defaults(cfg)   TrainingArguments values the task needs (e.g. predict_with_generate); the
                             user's `training:` section still wins
    preprocess_logits_for_metrics(logits, labels)
                             shrinks each evaluation batch's logits before they are gathered: a language
                             model's vocabulary-sized logits for a whole test set would not fit in memory
    fit_to_model(spec, model, cfg) -> spec
                             what the task decides once the model is loaded, before preprocessing (causal-lm:
                             whether the model keeps packed documents apart)

Adding a task is one module and one line in TASKS. Helpers shared by several tasks live in modules
that are not registered (language_model.py).
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from job.errors import ConfigError

TASKS = {
    "text-classification": "job.tasks.text_classification",
    "token-classification": "job.tasks.token_classification",
    "seq2seq": "job.tasks.seq2seq",
    "causal-lm": "job.tasks.causal_lm",
    "masked-lm": "job.tasks.masked_lm",
    "permutation-lm": "job.tasks.permutation_lm",
}


def get(name: str) -> ModuleType:
    """The task module registered under `name`; unknown names get a 'did you mean' hint."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (choose: {', '.join(TASKS)})"
        raise ConfigError(f"unknown task {name!r}{hint}", where="task.name")
    return importlib.import_module(TASKS[name])
