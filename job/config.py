"""The job's configuration: its schema, the four layers that set it, and their checks.

Precedence, lowest to highest (documented once, here and in the README):

    defaults  <  YAML file (--config / FINETUNE_CONFIG)  <  FINETUNE_* environment  <  --set key=value

Every value remembers which layer set it (`finetune-job config` prints that). Unknown keys are errors
with a "did you mean" hint, values must have the declared type, and settings that contradict each
other are rejected here, before a weight or a row is read. The `training:` section is passed through
to `transformers.TrainingArguments`, so its keys and types are checked against that class instead of
being declared again here. The `task:` section holds the task's name plus the settings its module
declares (see job/tasks/).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job import env
from job.errors import ConfigError

BUILTIN_PREFIX = "builtin:"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # matched whole: "abc\n" is not a run id
# "token" only as a word of the key (hub_token), not max_new_tokens: a redacted count would also be
# scrubbed from every log line as a secret value.
_SECRET_KEY = re.compile(r"(^|_)token($|_)|secret|password|passwd|credential|api_key|access_key", re.I)
# The user[:password]@ of a URL (an endpoint, a data path): redacted in whatever value holds it.
_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^/?#\s@]+)@", re.I)
REDACTED = "***"


def _setting(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class ModelConfig:
    name: str = _setting("builtin:tiny-bert", "Hub id, local directory, s3:// prefix, or builtin:tiny-bert.")
    revision: str | None = _setting(None, "Hub revision (branch, tag or commit) of the model.")
    trust_remote_code: bool = _setting(False, "Run model code shipped with a Hub model. Off unless you trust it.")
    train: str = _setting(
        "all", "all: fine-tune every layer; head: train only a new head on the frozen body's features (transfer "
        "learning); lora: low-rank adapters on the frozen body, the task head in full (the lora: section).",
    )
    pooling: str = _setting(
        "mean", "model.train head: the vector the head reads: mean (of the token vectors; what sentence-embedding "
        "models such as all-MiniLM-L6-v2 give) or cls (the first token's, as classic BERT's classifier).",
    )
    attn_implementation: str | None = _setting(
        None, "Attention kernel: sdpa, eager, flash_attention_2, flash_attention_3, flex_attention or a Hub kernel; "
        "transformers' default (sdpa where the model has it) when unset.",
    )


@dataclass
class DataConfig:
    dataset: str | None = _setting(None, "Hub dataset id, or a shipped demo (builtin:sentiment-demo, builtin:ner-demo, builtin:translation-demo, builtin:stories-demo). Or use the *_files keys.")
    config_name: str | None = _setting(None, "Hub dataset configuration name.")
    revision: str | None = _setting(None, "Hub dataset revision (branch, tag or commit).")
    train_files: str | list[str] | None = _setting(None, "Local path, glob or s3:// URI (or a list of them).")
    validation_files: str | list[str] | None = _setting(None, "As train_files; carved from train when absent.")
    test_files: str | list[str] | None = _setting(None, "As train_files; carved from train when absent.")
    format: str | None = _setting(None, "csv, tsv, json, parquet, text (a row per line) or conll; inferred from the file extension when unset.")
    field: str | None = _setting(None, "JSON files: the key whose list holds the rows (`{\"version\": ..., \"data\": [...]}`: data).")
    text_column: str = _setting("text", "Input column ('tokens' for CoNLL files); a dotted name (translation.en) reaches into a nested field.")
    text_pair_column: str | None = _setting(None, "Second input column for sentence-pair tasks.")
    label_column: str = _setting("label", "Label (or target) column ('tags' for CoNLL files).")
    id_column: str | None = _setting(None, "Column that identifies a row in predictions; the row number when unset.")
    label_names: list[str] | None = _setting(None, "Fixes the label set and its order (integer labels are ids into it); inferred when unset.")
    validation_size: float = _setting(0.1, "Share of train carved as validation when there is no validation split.")
    test_size: float = _setting(0.1, "Share of train carved as test when there is no test split.")
    max_train_samples: int | None = _setting(None, "Keep only the first N training rows (smoke runs).")
    max_eval_samples: int | None = _setting(None, "Keep only the first N validation rows.")
    max_predict_samples: int | None = _setting(None, "Keep only the first N test rows.")
    max_length: int | None = _setting(None, "Truncate inputs to N tokens (default: the tokenizer's limit, at most 512).")
    pad_to_max_length: bool = _setting(False, "Pad every batch to max_length (slower; for static-shape hardware).")
    streaming: bool = _setting(False, "Stream the training split as an IterableDataset (needs training.max_steps).")
    num_proc: int | None = _setting(None, "Worker processes for tokenization (map-style datasets only).")


@dataclass
class OutputConfig:
    uri: str = _setting("./outputs", "Local directory or s3://bucket/prefix; each run writes <uri>/<run-id>/.")
    work_dir: str | None = _setting(None, "Local scratch for checkpoints and staging (default: $TMPDIR/finetune-job).")


@dataclass
class S3Config:
    endpoint_url: str | None = _setting(None, "S3-compatible endpoint; AWS_ENDPOINT_URL is used when unset.")
    region: str | None = _setting(None, "Region; the AWS configuration chain decides when unset.")
    max_attempts: int = _setting(10, "Attempts per storage operation (a request with its reply's body, a listing, a file).")
    retry_seconds: float = _setting(120.0, "How long one storage operation may keep retrying before the job gives up (exit 6).")
    multipart_threshold_mb: int = _setting(64, "Files larger than this upload in parts.")
    multipart_chunksize_mb: int = _setting(16, "Size of each uploaded part (at least 5).")


@dataclass
class CheckpointConfig:
    every_steps: int | None = _setting(None, "Save and upload a checkpoint every N optimizer steps.")
    every_minutes: float | None = _setting(30.0, "Also save one when this many minutes passed since the last (null: off).")
    keep: int = _setting(2, "Complete checkpoints kept in storage; older ones are deleted.")
    keep_after_success: bool = _setting(False, "Keep the run's checkpoints once it has finished.")


@dataclass
class DistributedConfig:
    nproc_per_node: int | None = _setting(None, "Workers on this node; default: one per visible GPU, else 1.")
    shutdown_grace_seconds: int = _setting(240, "After SIGTERM, how long workers may take to checkpoint before being killed.")


@dataclass
class PromotionConfig:
    mode: str = _setting("auto", "auto: promote when the run beats the champion; never; always.")
    metric: str = _setting(
        "test_f1",
        "test_* or eval_* metric both models are scored on (default: the task's: test_f1, test_bleu or "
        "test_perplexity); *loss and *perplexity are better when lower.",
    )
    min_delta: float | str = _setting(0.0, "Least improvement that promotes: absolute (0.01) or relative ('1%').")


@dataclass
class RetentionConfig:
    keep_runs: int | None = _setting(None, "Keep the N newest finished runs (plus the champion); null keeps every run.")
    abandoned_after_hours: float = _setting(48.0, "An unfinished run untouched this long is abandoned and may be deleted.")


@dataclass
class ScheduleConfig:
    date: str | None = _setting(None, "YYYY-MM-DD that {date} in data paths stands for; today (UTC) when unset.")


@dataclass
class LoraConfig:
    r: int = _setting(8, "Rank of each adapter (model.train: lora).")
    alpha: float = _setting(16.0, "Scaling: the adapter's update is multiplied by alpha / r.")
    dropout: float = _setting(0.0, "Dropout on the adapter's input (0: none, and no copy of every layer's input).")
    target_modules: list[str] | None = _setting(
        None, "Names of the layers that get adapters (e.g. [query, value]); every linear layer but the output "
        "layer and the task head when unset.",
    )
    publish: str = _setting("merged", "merged: an ordinary model, adapters folded in; adapter: only the adapters "
                            "and the task head, loaded over model.name (which must stay loadable).")


@dataclass
class TrackingConfig:
    uri: str | None = _setting(
        None, "MLflow tracking server (http://mlflow:5000): params, metrics per step and the champion as a "
        "registered model version; default: $MLFLOW_TRACKING_URI; neither: no tracking (README: MLflow).",
    )
    experiment: str = _setting("finetune-job", "MLflow experiment the runs go to ($MLFLOW_EXPERIMENT_NAME wins).")
    model_name: str | None = _setting(None, "Registered model whose `champion` alias follows champion.json; default finetune-job-<task>.")


@dataclass
class TaskConfig:
    name: str = _setting("text-classification", "The kind of fine-tuning: a name in job/tasks/ TASKS (README: Tasks).")
    settings: Any = None  # the task module's own Settings dataclass, filled in by load()


@dataclass
class JobConfig:
    run_id: str | None = _setting(None, "Names <output.uri>/<run-id>/; generated when unset.")
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    s3: S3Config = field(default_factory=S3Config)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    training: dict[str, Any] = field(default_factory=dict)
    # dotted key -> where its value came from ("default", "file x.yaml", "env FINETUNE_X", "--set")
    sources: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def seed(self) -> int:
        """One seed for everything (data carving, init, sampling): TrainingArguments' own."""
        return int(self.training.get("seed", 42))


# Sections whose keys are declared by a dataclass; `training` and the task settings are checked elsewhere.
_SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "output": OutputConfig,
    "s3": S3Config,
    "checkpoint": CheckpointConfig,
    "distributed": DistributedConfig,
    "promotion": PromotionConfig,
    "retention": RetentionConfig,
    "schedule": ScheduleConfig,
    "lora": LoraConfig,
    "tracking": TrackingConfig,
}
_TOP_LEVEL = ("run_id", "task", *_SECTIONS, "training")
# Keys of TrainingArguments the job owns: setting them would break where the job puts its files.
_MANAGED_TRAINING_KEYS = {"output_dir": "the job stages under output.work_dir; set output.uri instead"}


class _Text(str):
    """A raw string from the environment or --set: typed by the field it lands in, not by its look."""


# YAML 1.2's core-schema float, as users write it (`2e-5`, `1e3`, `.5`, `-1.5E+3`): PyYAML follows
# YAML 1.1, where a float needs a dot and a signed exponent, so `2e-5` stayed text. Integers and
# version-like strings (`1.2.3`) do not match.
_FLOAT_1_2 = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$|^[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)$")


class _Number:
    """A number read from YAML that remembers its text: a string field (a revision such as `7e12345`)
    takes the text back instead of a number it never meant."""

    text: str


class _Int(_Number, int):
    pass


class _Float(_Number, float):
    pass


def _yaml_loader():
    """The one YAML reader for config files, environment values and --set values."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_number(self, node, kind):
            base = yaml.SafeLoader.construct_yaml_float if kind is _Float else yaml.SafeLoader.construct_yaml_int
            number = kind(base(self, node))
            number.text = node.value
            return number

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+.0123456789"))
    Loader.add_constructor("tag:yaml.org,2002:float", lambda loader, node: loader.construct_number(node, _Float))
    Loader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: loader.construct_number(node, _Int))
    return Loader


def _parse_yaml(text: str) -> Any:
    import yaml

    return yaml.load(text, Loader=_yaml_loader())


def _plain(value: Any, keep_text: bool = False) -> Any:
    """Plain ints and floats again (yaml.safe_dump refuses subclasses); with keep_text, a number
    goes back to the text it was written as."""
    if isinstance(value, _Number):
        return value.text if keep_text else (float(value) if isinstance(value, float) else int(value))
    if isinstance(value, dict):
        return {k: _plain(v, keep_text) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, keep_text) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- loading


def load(path: str | None = None, sets: tuple[str, ...] = (), *, use_env: bool = True) -> JobConfig:
    """Resolve the config from its four layers and check it; raise ConfigError on the first problem.

    With no config file, and no data source or model of the user's own in the environment or --set,
    the embedded demo of the task (job/demo/<task>.yaml) is the layer under them: `finetune-job run
    --set task=seq2seq` trains on the shipped demo data. Otherwise the demo stays out of it."""
    from job import tasks  # cheap: task modules import their heavy libraries lazily

    if path is None:
        path = env.get("FINETUNE_CONFIG") or None
    layers: list[tuple[dict, str]] = []  # (values, where they came from), lowest precedence first
    if path is not None:
        layers.append((_read_yaml(path), f"file {path}"))
    if use_env:
        for key, (value, variable) in env.config_overrides().items():
            layers.append((_nest(key, _Text(value)), f"env {variable}"))
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected key=value, got {item!r}", where="--set")
        layers.append((_nest(key.strip(), _Text(value)), "--set"))

    merged, sources = _merge_layers(layers)
    task_name = _typed(merged.get("task", {}).get("name", TaskConfig.name), str, "task.name", sources)
    task_module = tasks.get(task_name)  # ConfigError with a hint when unknown
    if path is None and not _names_data_or_model(merged):
        merged, sources = _merge_layers([_demo_layer(task_name), *layers])
    task_section = merged.get("task", {})
    settings = _build(task_module.Settings, {k: v for k, v in task_section.items() if k != "name"}, "task", sources)
    # Without a model.name, each task trains its own tiny offline default (a builtin of its family).
    merged.setdefault("model", {}).setdefault("name", task_module.BUILTIN_MODEL)
    # ... and without a promotion.metric, the promotion gate compares the task's headline score.
    metric = task_module.promotion_metric(settings) if hasattr(task_module, "promotion_metric") else task_module.PROMOTION_METRIC
    merged.setdefault("promotion", {}).setdefault("metric", metric)

    cfg = JobConfig(
        run_id=_typed(merged.get("run_id"), str | None, "run_id", sources),
        task=TaskConfig(name=task_name, settings=settings),
        training=_check_training(merged.get("training", {}), sources, task_module),
        **{name: _build(cls, merged.get(name, {}), name, sources) for name, cls in _SECTIONS.items()},
    )
    cfg.sources = {key: sources.get(key, "default") for key in flatten(to_dict(cfg))}
    _format_defaults(cfg)
    _validate(cfg)
    return cfg


DEMO_SOURCE = "demo"  # how `finetune-job config` marks the values the embedded demo set
_DATA_SOURCES = ("dataset", "train_files", "validation_files", "test_files")


def _merge_layers(layers: list[tuple[dict, str]]) -> tuple[dict, dict]:
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for values, source in layers:
        _merge(merged, sources, values, source)
    return merged, sources


def _names_data_or_model(merged: dict) -> bool:
    """Does the user name data or a model of their own? A builtin model is no model of their own: the
    demo still applies (`--set model.name=builtin:tiny-xlnet` tries another family on it)."""
    data, model = merged.get("data", {}), merged.get("model", {})
    return any(key in data for key in _DATA_SOURCES) or ("name" in model and not is_builtin(str(model["name"])))


def _demo_layer(task_name: str) -> tuple[dict, str]:
    from importlib import resources

    with resources.as_file(resources.files("job") / "demo" / f"{task_name}.yaml") as demo:
        return _read_yaml(str(demo)), f"{DEMO_SOURCE} job/demo/{task_name}.yaml"


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", where=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file ({exc.__class__.__name__})", where=path) from None
    try:
        data = _parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML{at}: {problem}", where=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping of sections, got {type(data).__name__}", where=path)
    return data


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    parts = dotted.split(".")
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def _merge(into: dict, sources: dict, layer: dict, source: str, prefix: str = "") -> None:
    """Overlay one layer, checking key names against the schema and recording each value's source."""
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        _check_key(dotted, source)
        # Sections (and a task's settings) merge key by key; a training value is a leaf even when it is
        # a dict (e.g. training.accelerator_config), and so is every other value.
        depth = dotted.count(".")
        if depth == 0 and key == "task" and isinstance(value, str):  # `task: seq2seq` is `task: {name: seq2seq}`
            value = {"name": value}
        if depth == 0 and key != "run_id" and not isinstance(value, dict):
            raise ConfigError(f"expected a mapping of keys, got {value!r}", where=f"{key} ({source})")
        if isinstance(value, dict) and depth == 0:
            section = into.setdefault(key, {})
            _merge(section, sources, value, source, prefix=f"{dotted}.")
        else:
            into[key] = value
            sources[dotted] = source


def _check_key(dotted: str, source: str) -> None:
    parts = dotted.split(".")
    if parts[0] not in _TOP_LEVEL:
        _unknown(dotted, parts[0], _TOP_LEVEL, source)
    if len(parts) == 1:
        return
    section = parts[0]
    if section in _SECTIONS:
        names = [f.name for f in dataclasses.fields(_SECTIONS[section])]
        if parts[1] not in names:
            _unknown(dotted, parts[1], names, source, prefix=f"{section}.")
    elif section == "run_id":
        raise ConfigError("run_id is a value, not a section", where=f"{dotted} ({source})")
    if len(parts) > 2:
        raise ConfigError("nested too deep: sections hold plain values", where=f"{dotted} ({source})")


def _unknown(dotted: str, name: str, choices, source: str, prefix: str = "") -> typing.NoReturn:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid: {', '.join(choices)})"
    raise ConfigError(f"unknown key{hint}", where=f"{dotted} ({source})")


# ---------------------------------------------------------------------------------------------- types


def _build(cls, values: dict[str, Any], section: str, sources: dict[str, str]):
    """Instantiate a section dataclass, type-checking each value against its annotation."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            _unknown(f"{section}.{key}", key, sorted(names), sources.get(f"{section}.{key}", "?"), prefix=f"{section}.")
    kwargs = {key: _typed(value, hints[key], f"{section}.{key}", sources) for key, value in values.items()}
    return cls(**kwargs)


def _typed(value: Any, annotation, key: str, sources: dict[str, str]) -> Any:
    if isinstance(value, _Text):
        value = _from_text(value, annotation)
    if not _matches(value, annotation) and _matches(_plain(value, keep_text=True), annotation):
        value = _plain(value, keep_text=True)  # `revision: 7e12345` is a name, not a number
    value = _plain(value)
    if not _matches(value, annotation):
        where = f"{key} ({sources[key]})" if key in sources else key
        shown = REDACTED if is_secret(key) else repr(value)
        raise ConfigError(f"expected {_describe(annotation)}, got {shown}", where=where)
    return value


def _from_text(text: _Text, annotation) -> Any:
    """Read an environment/--set string: YAML scalar rules, unless the field takes the text as is."""
    import yaml

    raw = str(text)
    if _accepts(annotation, str) and not any(_accepts(annotation, t) for t in (bool, int, float, list, dict)):
        return None if raw.lower() in ("null", "~", "none") and _accepts(annotation, type(None)) else raw
    try:
        parsed = _parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw
    if _accepts(annotation, str) and not _matches(parsed, annotation):
        return raw
    return parsed


def _members(annotation) -> tuple:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _accepts(annotation, kind: type) -> bool:
    for member in _members(annotation):
        base = typing.get_origin(member) or member
        if base is Any or base is kind or (isinstance(base, type) and issubclass(base, enum.Enum) and kind is str):
            return True
    return False


def _matches(value: Any, annotation) -> bool:
    for member in _members(annotation):
        base = typing.get_origin(member) or member
        if base is Any:
            return True
        if value is None:
            if member is type(None):
                return True
            continue
        if base is typing.Literal:
            if value in typing.get_args(member):
                return True
            continue
        if isinstance(base, type) and issubclass(base, enum.Enum):
            if isinstance(value, str) or isinstance(value, base):
                return True
            continue
        if base is bool:
            if isinstance(value, bool):
                return True
            continue
        if base is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
            continue
        if base is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
            continue
        if base is list:
            args = typing.get_args(member)
            if isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value)):
                return True
            continue
        if isinstance(base, type) and isinstance(value, base):
            return True
    return False


def _describe(annotation) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    parts = []
    for member in _members(annotation):
        if member is type(None):
            continue
        base = typing.get_origin(member) or member
        parts.append(names.get(base, getattr(base, "__name__", str(base))))
    return " or ".join(dict.fromkeys(parts)) or "nothing"


def _check_training(values: dict[str, Any], sources: dict[str, str], task_module) -> dict[str, Any]:
    """Check names and types of the TrainingArguments pass-through (the task's class: seq2seq's has
    generation settings), then its values (job/training_args.py)."""
    if not values:
        return {}
    import transformers  # heavy; only config-reading commands get here

    from job import training_args

    arguments_class = getattr(transformers, getattr(task_module, "TRAINER", ("Trainer", "TrainingArguments"))[1])
    hints = typing.get_type_hints(arguments_class)
    fields = {f.name for f in dataclasses.fields(arguments_class) if f.init}
    checked = {}
    for key, value in values.items():
        dotted = f"training.{key}"
        if key in _MANAGED_TRAINING_KEYS:
            raise ConfigError(_MANAGED_TRAINING_KEYS[key], where=f"{dotted} ({sources.get(dotted)})")
        if key not in fields:
            _unknown(dotted, key, sorted(fields), sources.get(dotted, "?"), prefix="training.")
        checked[key] = _typed(value, hints.get(key, Any), dotted, sources)
    training_args.check(checked, lambda key: f"training.{key} ({sources.get(f'training.{key}', 'default')})", arguments_class)
    return checked


# ---------------------------------------------------------------------------------------------- checks


def _validate(cfg: JobConfig) -> None:
    """Settings that contradict each other, caught before anything is loaded (torchtune's rule)."""

    def where(key: str) -> str:
        return f"{key} ({cfg.sources.get(key, 'default')})"

    if cfg.run_id is not None and not _RUN_ID.fullmatch(cfg.run_id):
        raise ConfigError("use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", where=where("run_id"))
    _validate_transfer(cfg, where)
    report_to = cfg.training.get("report_to")
    if report_to == "mlflow" or (isinstance(report_to, list) and "mlflow" in report_to):
        # Hugging Face's MLflowCallback would start a second MLflow run on every attempt and every worker.
        raise ConfigError("use the tracking: section (tracking.uri or MLFLOW_TRACKING_URI) for MLflow", where=where("training.report_to"))
    data = cfg.data
    if data.dataset is None and data.train_files is None:
        raise ConfigError("no training data: set data.dataset (a Hub id) or data.train_files", where="data")
    if data.dataset is not None and data.train_files is not None:
        raise ConfigError("set data.dataset or data.train_files, not both", where="data")
    if data.format is not None and data.format not in FILE_FORMATS:
        raise ConfigError(f"choose one of {', '.join(FILE_FORMATS)}, got {data.format!r}", where=where("data.format"))
    for key in ("validation_size", "test_size"):
        if not 0 < getattr(data, key) < 1:
            raise ConfigError(f"must be between 0 and 1, got {getattr(data, key)}", where=where(f"data.{key}"))
    for key in ("max_train_samples", "max_eval_samples", "max_predict_samples", "max_length", "num_proc"):
        value = getattr(data, key)
        if value is not None and value < 1:
            raise ConfigError(f"must be at least 1, got {value}", where=where(f"data.{key}"))
    if data.pad_to_max_length and data.max_length is None:
        raise ConfigError("data.pad_to_max_length needs data.max_length", where=where("data.pad_to_max_length"))
    if data.streaming and int(cfg.training.get("max_steps", -1)) <= 0:
        raise ConfigError(
            "a streamed dataset has no length, so set training.max_steps (e.g. --set training.max_steps=1000)",
            where=where("data.streaming"),
        )
    uri = cfg.output.uri
    if "://" in uri and not uri.startswith("s3://"):
        raise ConfigError(f"use a local path or s3://bucket/prefix, got {uri!r}", where=where("output.uri"))
    if uri.startswith("s3://") and not uri[5:].split("/")[0]:
        raise ConfigError("the s3:// URI has no bucket", where=where("output.uri"))
    checkpoint = cfg.checkpoint
    if checkpoint.every_steps is not None and checkpoint.every_steps < 1:
        raise ConfigError(f"must be at least 1, got {checkpoint.every_steps}", where=where("checkpoint.every_steps"))
    if checkpoint.every_minutes is not None and checkpoint.every_minutes <= 0:
        raise ConfigError(f"must be positive (or null to turn off), got {checkpoint.every_minutes}", where=where("checkpoint.every_minutes"))
    if checkpoint.keep < 1:
        raise ConfigError(f"keep at least 1 checkpoint, got {checkpoint.keep}", where=where("checkpoint.keep"))
    if cfg.distributed.nproc_per_node is not None and cfg.distributed.nproc_per_node < 1:
        raise ConfigError(f"must be at least 1, got {cfg.distributed.nproc_per_node}", where=where("distributed.nproc_per_node"))
    for key in ("save_strategy", "save_steps", "save_total_limit", "resume_from_checkpoint"):
        if key in cfg.training:
            raise ConfigError("checkpoints are managed by the job; use the checkpoint: section", where=where(f"training.{key}"))
    if cfg.s3.multipart_chunksize_mb < 5:
        raise ConfigError("S3 parts must be at least 5 MB", where=where("s3.multipart_chunksize_mb"))
    if cfg.s3.max_attempts < 1:
        raise ConfigError(f"must be at least 1, got {cfg.s3.max_attempts}", where=where("s3.max_attempts"))
    if cfg.s3.retry_seconds < 0:
        raise ConfigError(f"must be at least 0, got {cfg.s3.retry_seconds}", where=where("s3.retry_seconds"))
    _validate_scheduling(cfg, where)


def _validate_transfer(cfg: JobConfig, where) -> None:
    """model.train, model.pooling and the lora: section (job/head_only.py, job/lora.py)."""
    model, lora = cfg.model, cfg.lora
    if model.train not in TRAIN_MODES:
        raise ConfigError(f"choose one of {', '.join(TRAIN_MODES)}, got {model.train!r}", where=where("model.train"))
    if model.pooling not in POOLINGS:
        raise ConfigError(f"choose one of {', '.join(POOLINGS)}, got {model.pooling!r}", where=where("model.pooling"))
    if model.train == "head" and cfg.task.name != "text-classification":
        raise ConfigError(
            f"head-only training reads one pooled vector per row: text-classification only; for {cfg.task.name} "
            "use lora or all", where=where("model.train"),
        )
    if model.train == "head" and cfg.data.streaming:
        raise ConfigError("head-only training computes every row's features up front; it cannot stream the data",
                          where=where("model.train"))
    if lora.r < 1:
        raise ConfigError(f"must be at least 1, got {lora.r}", where=where("lora.r"))
    if lora.alpha <= 0:
        raise ConfigError(f"must be positive, got {lora.alpha}", where=where("lora.alpha"))
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"must be at least 0 and below 1, got {lora.dropout}", where=where("lora.dropout"))
    if lora.target_modules is not None and not lora.target_modules:
        raise ConfigError("name at least one layer, or null for every linear layer", where=where("lora.target_modules"))
    if lora.publish not in LORA_PUBLISH:
        raise ConfigError(f"choose one of {', '.join(LORA_PUBLISH)}, got {lora.publish!r}", where=where("lora.publish"))
    if model.train == "lora" and lora.publish == "adapter" and is_builtin(model.name):
        raise ConfigError(
            f"an adapter is loaded over its base model later, and {model.name} is built from the training data "
            "(it cannot be loaded again); publish merged", where=where("lora.publish"),
        )


TRAIN_MODES = ("all", "head", "lora")
POOLINGS = ("mean", "cls")
LORA_PUBLISH = ("merged", "adapter")


def _validate_scheduling(cfg: JobConfig, where) -> None:
    """promotion:, retention:, schedule: and the {date} templates in data paths (job/windows.py)."""
    from job import champion, windows

    if cfg.run_id in champion.RESERVED:
        raise ConfigError(f"{cfg.run_id!r} is where the champion is kept; choose another run id", where=where("run_id"))
    promotion = cfg.promotion
    if promotion.mode not in PROMOTION_MODES:
        raise ConfigError(f"choose one of {', '.join(PROMOTION_MODES)}, got {promotion.mode!r}", where=where("promotion.mode"))
    if not promotion.metric.startswith(("test_", "eval_")):
        raise ConfigError(
            f"name a test_* or eval_* metric (e.g. test_f1), got {promotion.metric!r}", where=where("promotion.metric")
        )
    delta = promotion.min_delta
    if isinstance(delta, str) and not re.fullmatch(r"\d+(\.\d+)?%", delta.strip()):
        raise ConfigError(f"use a number (0.01) or a percentage ('1%'), got {delta!r}", where=where("promotion.min_delta"))
    if not isinstance(delta, str) and delta < 0:
        raise ConfigError(f"must be at least 0, got {delta}", where=where("promotion.min_delta"))
    if cfg.retention.keep_runs is not None and cfg.retention.keep_runs < 1:
        raise ConfigError(f"keep at least 1 run (or null to keep all), got {cfg.retention.keep_runs}", where=where("retention.keep_runs"))
    if cfg.retention.abandoned_after_hours <= 0:
        raise ConfigError(
            f"must be positive, got {cfg.retention.abandoned_after_hours}", where=where("retention.abandoned_after_hours")
        )
    if cfg.schedule.date is not None:
        windows.parse_date(cfg.schedule.date, where("schedule.date"))
    for split in ("train", "validation", "test"):
        patterns = getattr(cfg.data, f"{split}_files")
        for pattern in [patterns] if isinstance(patterns, str) else patterns or []:
            windows.check(pattern, where(f"data.{split}_files"))


PROMOTION_MODES = ("auto", "never", "always")


FILE_FORMATS = ("csv", "tsv", "json", "parquet", "text", "conll")
# Column defaults that follow the data's format: a CoNLL file is read into tokens and tags.
_FORMAT_COLUMNS = {"conll": {"text_column": "tokens", "label_column": "tags"}}


def _format_defaults(cfg: JobConfig) -> None:
    """Columns left at their defaults follow the format of the data (data.format, or what every file
    name says): `finetune-job config` shows them with the source `default for <format> data`."""
    from job import data  # data.py reads the file names; it imports this module, so not at the top

    fmt = data.declared_format(cfg.data)
    for key, column in _FORMAT_COLUMNS.get(fmt, {}).items():
        if cfg.sources.get(f"data.{key}") == "default":
            setattr(cfg.data, key, column)
            cfg.sources[f"data.{key}"] = f"default for {fmt} data"


# ---------------------------------------------------------------------------------------------- output


def to_dict(cfg: JobConfig) -> dict[str, Any]:
    """The resolved config as plain nested data (what config.yaml holds), without redaction."""
    out: dict[str, Any] = {"run_id": cfg.run_id}
    task_settings = dataclasses.asdict(cfg.task.settings) if dataclasses.is_dataclass(cfg.task.settings) else {}
    out["task"] = {"name": cfg.task.name, **task_settings}
    for name in _SECTIONS:
        out[name] = dataclasses.asdict(getattr(cfg, name))
    out["training"] = dict(cfg.training)
    return out


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and prefix == "":
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def is_secret(key: str) -> bool:
    return bool(_SECRET_KEY.search(key.rsplit(".", 1)[-1]))


def redact(value: Any, key: str = "") -> Any:
    """Replace values held under secret-looking keys, and the user:password@ of URLs; walk nested data."""
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if value is not None and is_secret(key):
        return REDACTED
    return redact_url(value) if isinstance(value, str) else value


def redact_url(text: str) -> str:
    """`http://user:pass@host/x` as `http://***@host/x`, wherever a URL appears in `text`."""
    return _USERINFO.sub(rf"\1{REDACTED}@", text)


def url_secrets(text: str) -> list[str]:
    """The user:password (and the password alone) of every URL in `text`, for the log scrubber."""
    found = []
    for userinfo in (m.group(2) for m in _USERINFO.finditer(text)):
        found += [userinfo, userinfo.partition(":")[2]]
    return [value for value in found if value]


def secret_values(cfg: JobConfig) -> list[str]:
    """Values the config holds under secret-looking keys or in URLs (for the log scrubber)."""
    flat = flatten(to_dict(cfg)).items()
    values = [str(v) for k, v in flat if v not in (None, "") and is_secret(k)]
    return values + [secret for _, v in flat for secret in url_secrets(str(v)) if v is not None]


def describe(cfg: JobConfig) -> str:
    """One line per key: the resolved (redacted) value and the layer that set it."""
    import json

    flat = flatten(redact(to_dict(cfg)))
    width = max(len(k) for k in flat)
    return "\n".join(f"{key:<{width}}  {json.dumps(value)}  # {cfg.sources.get(key, 'default')}" for key, value in flat.items())


def dump_yaml(cfg: JobConfig) -> str:
    import yaml

    return yaml.safe_dump(redact(to_dict(cfg)), sort_keys=False)


def is_builtin(name: str | None) -> bool:
    return bool(name) and name.startswith(BUILTIN_PREFIX)
