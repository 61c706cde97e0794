"""Where the model comes from: a builtin tiny model, a local directory, a GGUF file, an s3:// prefix,
or the Hub.

An s3:// model is downloaded to the work directory first and then loaded like a local one. Hub code
(`trust_remote_code`) only runs when the config says so. `model.train` says what learns: `all` every
layer; `head` a new head over the frozen body's pooled vectors (job/training/head_only.py, job/models/pooled.py); `lora`
low-rank adapters on the frozen body and the task head in full (job/models/lora.py). A new head (and a new
adapter) starts from the run's seed, so the same config gives the same model.

`load_published` reads back what a run published, in each mode's form, for `finetune-job predict` and
the promotion gate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

from job import storage
from job.config import JobConfig, env, is_builtin
from job.errors import ModelError, first_line
from job.models import builtin, gguf, lora

log = logging.getLogger(__name__)

META_FILE = "finetune_job.json"  # saved beside a published model: its task and how its inputs are read


def meta(cfg: JobConfig) -> dict:
    """What a published model carries beside its weights (META_FILE): the task and its settings, for the
    promotion gate (a champion of another task is not comparable), and the columns and file layout
    its inputs were read with, for `finetune-job predict`."""
    d = cfg.data
    return {
        "task": cfg.task.name,
        "text_column": d.text_column,
        "text_pair_column": d.text_pair_column,
        "label_column": d.label_column,
        "id_column": d.id_column,
        "format": d.format,
        "field": d.field,
        "max_length": d.max_length,
        # e.g. seq2seq's prefix and generation settings
        "task_settings": dataclasses.asdict(cfg.task.settings) if dataclasses.is_dataclass(cfg.task.settings) else {},
    }


def model_class(task):
    import transformers

    return getattr(transformers, task.MODEL_CLASS)


def load(cfg: JobConfig, task, spec, train_split, work_dir: Path):
    """Return (tokenizer, model) ready for training, with the task's head sized for `spec`."""
    from transformers import set_seed

    cls = model_class(task)
    kwargs = task.model_kwargs(spec)
    head_only = cfg.model.train == "head"
    if head_only:  # the body alone; the pooled head is added below
        from transformers import AutoModel

        cls, head_kwargs, kwargs = AutoModel, kwargs, {}
    name = cfg.model.name
    set_seed(cfg.seed)  # a pretrained body's new head (and LoRA's adapters) start from the seed too
    if is_builtin(name):
        tokenizer, model = builtin.build(name, task.texts(train_split, cfg), cls, kwargs, cfg.seed)
    else:
        location = resolve(cfg, work_dir)
        tokenizer, model = _from_pretrained(location, cfg, cls, kwargs, work_dir)
    if cfg.model.attn_implementation:
        _set_attention(model, cfg.model.attn_implementation)
    if head_only:
        from job.models.pooled import PooledTextClassifier  # imports torch

        model = PooledTextClassifier.around(model, cfg.model.pooling, **head_kwargs)
        model.body.requires_grad_(False)
    elif cfg.model.train == "lora":
        model = lora.wrap(model, cfg.lora, task)
    return tokenizer, model


def parameter_counts(model, cfg: JobConfig) -> dict:
    """The mode and how many parameters it trains, for metrics.json and the report; logged here.
    Counted by tensor identity, so weights shared between layers (tied embeddings) count once."""
    unique = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in unique)
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    if cfg.model.train == "lora":
        total -= lora.adapter_parameters(model)  # the model's own size, as for the other modes
    share = round(trainable / total, 6) if total else 0.0
    log.info("model: model.train %s trains %d of %d parameters (%.2f%%)", cfg.model.train, trainable, total, 100 * share)
    return {"train_mode": cfg.model.train, "trainable_parameters": trainable, "total_parameters": total,
            "trainable_share": share}


def resolve(cfg: JobConfig, work_dir: Path) -> str:
    """A local path or Hub id that from_pretrained can open (downloads s3:// prefixes first)."""
    name = cfg.model.name
    if name.startswith("s3://"):
        return str(download(name, cfg, work_dir))
    return name


def download(uri: str, cfg: JobConfig, work_dir: Path) -> Path:
    target = work_dir / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if not (target / "config.json").exists():
        store = storage.open_store(uri, cfg.s3)
        store.download("", target)
        log.info("model: downloaded %s to %s", uri, target)
    if not (target / "config.json").exists():
        raise ModelError("no config.json under this prefix: not a saved model", where=uri)
    return target


def _from_pretrained(location: str, cfg: JobConfig, cls, kwargs: dict, work_dir: Path):
    from transformers import AutoConfig, AutoTokenizer

    options = {"revision": cfg.model.revision, "trust_remote_code": cfg.model.trust_remote_code}
    try:
        if gguf.is_gguf(location):
            tokenizer, model = gguf.load(location, cls, kwargs, options, work_dir)
        else:
            if not hasattr(cls, "from_config"):  # a concrete class (not Auto) loads any weights it is given
                _check_model_type(AutoConfig.from_pretrained(location, **options), cls, location)
            tokenizer = AutoTokenizer.from_pretrained(location, **options)
            _check_weights(location)
            model = cls.from_pretrained(location, **options, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(_explain(exc, location), where=f"model.name: {location}") from exc
    log.info("model: %s loaded (%.1fM parameters)", location, model.num_parameters() / 1e6)
    return tokenizer, model


def _check_weights(location: str) -> None:
    """Read the header of every safetensors file of a local model (cheap: no tensor is loaded), so a
    corrupt or foreign file is a model error naming it, not a traceback from deep in from_pretrained."""
    from safetensors import safe_open

    folder = Path(location)
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            with safe_open(str(path), framework="pt") as weights:
                weights.keys()
        except Exception as exc:  # safetensors raises its own SafetensorError (and OSError for I/O)
            first = first_line(exc, 200)
            raise ModelError(f"not a readable safetensors weights file ({first})", where=str(path)) from exc


def _check_model_type(config, cls, location: str) -> None:
    wanted = cls.config_class.model_type
    if config.model_type != wanted:
        raise ModelError(f"a {config.model_type} model cannot be a {cls.__name__} (needs {wanted})", where=f"model.name: {location}")


def _explain(exc: Exception, location: str) -> str:
    text = first_line(exc, 10_000)
    if not Path(location).exists() and env.hub_offline():
        return f"not a local directory, and the Hub is off (HF_HUB_OFFLINE=1): {text[:200]}"
    return text[:300]


def _set_attention(model, name: str) -> None:
    """`model.attn_implementation`, refused in one line where its package is missing (flash_attn) or
    the model has no such kernel."""
    try:
        model.set_attn_implementation(name)
    except (ImportError, ValueError) as exc:
        raise ModelError(first_line(exc), where="model.attn_implementation") from None
    if model.config._attn_implementation != name:  # transformers only warns for a model that cannot switch
        raise ModelError(f"{type(model).__name__} cannot switch its attention to {name}", where="model.attn_implementation")
    log.info("model: %s attention", name)


def load_published(model_dir: Path, task, work_dir: Path, *, trust_remote_code: bool = False):
    """(tokenizer, model) from a directory a run published: an ordinary model (model.train: all, or
    lora merged), body + pooled head (head; job/models/pooled.py registers its class), or a LoRA adapter
    loaded over its base model (job/models/lora.py), which goes to `work_dir` first if it is on s3://.
    OSError or ValueError when it does not load."""
    from transformers import AutoTokenizer

    from job.models import pooled  # noqa: F401  imports torch; registers the pooled classifier with the Auto classes

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if lora.is_adapter(model_dir):  # the base loads as the run loaded it: a local directory, GGUF, s3://, the Hub
        base_cfg, kwargs = lora.base_of(model_dir, trust_remote_code)
        _, base = _from_pretrained(resolve(base_cfg, work_dir), base_cfg, model_class(task), kwargs, work_dir)
        return tokenizer, lora.attach(base, model_dir)
    return tokenizer, model_class(task).from_pretrained(model_dir, trust_remote_code=trust_remote_code)


def save_published(trainer, cfg: JobConfig, path: Path, head_only=None) -> None:
    """The model directory a run publishes, in its mode's form: for head, the frozen body and the
    trained head as one model; for lora, merged or the adapter (job/models/lora.py)."""
    if head_only is not None:
        head_only.assembled.save_pretrained(path)
        trainer.processing_class.save_pretrained(path)
    elif cfg.model.train == "lora":
        lora.save(trainer, cfg.lora, cfg.model.name, path)
    else:
        trainer.save_model(str(path))


def describe_model(cfg: JobConfig) -> str:
    """Resolve the model without loading weights; return a short description (for `check`)."""
    name = cfg.model.name
    if is_builtin(name):
        if name not in builtin.BUILTINS:
            raise ModelError(f"unknown builtin model (choose: {', '.join(builtin.BUILTINS)})", where="model.name")
        return f"{name} (built offline)"
    if name.startswith("s3://"):
        store = storage.open_store(name, cfg.s3)
        if not store.exists("config.json"):
            raise ModelError("no config.json under this prefix: not a saved model", where=name)
        return f"{name} (saved model in storage)"
    from transformers import AutoConfig

    options = {"revision": cfg.model.revision, "trust_remote_code": cfg.model.trust_remote_code}
    folder, _, file = name.rpartition("/")
    try:
        if gguf.is_gguf(name):
            AutoConfig.from_pretrained(folder or ".", gguf_file=file, **options)
        else:
            AutoConfig.from_pretrained(name, **options)
            _check_weights(name)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(_explain(exc, name), where=f"model.name: {name}") from exc
    kind = "GGUF file" if gguf.is_gguf(name) else "local directory"
    return f"{name} ({kind if Path(name).exists() else 'Hub'})"
