"""Reading a config: the four layers that set it, merged, typed and checked.

Precedence, lowest to highest (documented once, here and in docs/configuration.md):

    defaults  <  YAML file (--config / FINETUNE_CONFIG)  <  FINETUNE_* environment  <  --set key=value

Every value remembers which layer set it (`finetune-job config` prints that). Unknown keys are errors
with a "did you mean" hint, values must have the declared type, and settings that contradict each
other are rejected (job/config/validation.py), before a weight or a row is read. This is the one
module that needs both the schema (job/config/) and the task registry (job/tasks/): the task's name
picks its Settings class, its builtin model and its promotion metric, asked of the registry by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import types
import typing
from pathlib import Path
from typing import Any

from job import tasks
from job.config import env, training_args
from job.config.formats import FORMAT_COLUMNS, declared_format
from job.config.redacted import REDACTED, is_secret
from job.config.schema import SECTIONS, TOP_LEVEL, JobConfig, TaskConfig, flatten, is_builtin, to_dict
from job.config.validation import validate
from job.errors import ConfigError, first_line

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
        **{name: _build(cls, merged.get(name, {}), name, sources) for name, cls in SECTIONS.items()},
    )
    cfg.sources = {key: sources.get(key, "default") for key in flatten(to_dict(cfg))}
    _format_defaults(cfg)
    validate(cfg)
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
        problem = getattr(exc, "problem", None) or first_line(exc)
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
    if parts[0] not in TOP_LEVEL:
        _unknown(dotted, parts[0], TOP_LEVEL, source)
    if len(parts) == 1:
        return
    section = parts[0]
    if section in SECTIONS:
        names = [f.name for f in dataclasses.fields(SECTIONS[section])]
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
    generation settings), then its values (job/config/training_args.py)."""
    if not values:
        return {}
    import transformers  # heavy; only config-reading commands get here

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
    training_args.check_values(checked, lambda key: f"training.{key} ({sources.get(f'training.{key}', 'default')})", arguments_class)
    return checked




def _format_defaults(cfg: JobConfig) -> None:
    """Columns left at their defaults follow the format of the data (data.format, or what every file
    name says): `finetune-job config` shows them with the source `default for <format> data`."""
    fmt = declared_format(cfg.data)
    for key, column in FORMAT_COLUMNS.get(fmt, {}).items():
        if cfg.sources.get(f"data.{key}") == "default":
            setattr(cfg.data, key, column)
            cfg.sources[f"data.{key}"] = f"default for {fmt} data"


