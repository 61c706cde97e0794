"""LoRA (`model.train: lora`): low-rank adapters on the frozen body, through the `peft` library.

    finetune-job run --config job/configs/text-classification-minilm.yaml --set model.train=lora

    lora:
      r: 8                  # rank of each adapter
      alpha: 16             # the adapter's update is scaled by alpha / r
      dropout: 0.0          # on the adapter's input (0: none, and no copy of every layer's input)
      body_dropout: false   # the frozen body's dropout on hidden states: off (attention's own stays)
      target_modules: null  # every linear layer but the output layer and the task head
      publish: merged       # merged: an ordinary model; adapter: adapters + head, loaded over model.name

Which layers get adapters, by default: every linear layer (and GPT-2's Conv1D) of the model except its
output layer (a language model's vocabulary projection) and the task head. One rule for every family
(BERT's query/key/value/dense, Llama's q/k/v/o/gate/up/down_proj, T5's q/k/v/o/wi/wo, XLNet's
feed-forward: its attention weights are no linear layers), as QLoRA found adapting every linear layer
is what matches full fine-tuning; peft's own table names only the attention's query and value, and
has no entry for XLNet or DistilBERT. `lora.target_modules` names layers instead (matched as peft
does: a module whose name is, or ends with, `.` + the entry).

A classification head (`classifier` or `score`, new for the task) trains in full: peft keeps a
trainable copy of it (`modules_to_save`). Language-model heads stay frozen: they are pretrained.

The frozen body's dropout on hidden states (BERT's after embeddings, attention output and feed-forward)
is off unless `lora.body_dropout: true`: on all-MiniLM-L6-v2 and rotten_tomatoes it bought no accuracy
and its random masks cost 13% of LoRA's training time on a CPU (docs/transfer-learning.md). Dropout
inside an attention module stays: in BERT its probability is handed to the attention kernel, and at 0
PyTorch's CPU attention takes its flash kernel, whose backward (bf16, batch 32 of 28 tokens) took 2.5x
the plain kernel's with dropout. The published model's config still names the model's own dropout.

Publishing: `merged` folds each adapter into its layer and saves an ordinary model that loads with
no peft at all. `adapter` saves only the adapters and the head (`adapter_config.json`,
`adapter_model.safetensors`) beside the model's config.json and tokenizer; `base_model_name_or_path`
in adapter_config.json is model.name (made absolute for a local path), which must still load when
the adapter is used: a builtin model is built from the training data and cannot, so the config
refuses adapter publishing for it. Outside the job:

    from peft import PeftModel
    base = AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=2)
    model = PeftModel.from_pretrained(base, "outputs/<run-id>/model")
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from job.config import JobConfig, ModelConfig
from job.config import LoraConfig as LoraSettings
from job.errors import ConfigError, first_line

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
# peft's task type per task model class; a task not named here gets the plain PeftModel.
TASK_TYPES = {
    "AutoModelForSequenceClassification": "SEQ_CLS",
    "AutoModelForTokenClassification": "TOKEN_CLS",
    "AutoModelForSeq2SeqLM": "SEQ_2_SEQ_LM",
    "AutoModelForCausalLM": "CAUSAL_LM",
}
HEADS = ("classifier", "score")  # a classification model's new head: trained in full


def wrap(model, settings: LoraSettings, task):
    """`model` with adapters on its target layers, everything else frozen but a classification head."""
    import torch
    from peft import LoraConfig, get_peft_model

    task_type = TASK_TYPES.get(task.MODEL_CLASS)
    heads = [name for name in HEADS if task_type in ("SEQ_CLS", "TOKEN_CLS") and getattr(model, name, None) is not None]
    targets = list(settings.target_modules or default_targets(model, heads))
    config = LoraConfig(
        task_type=task_type, r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=targets, modules_to_save=list(heads) or None,  # a copy: peft appends its own names to it
    )
    config._register_custom_module({torch.nn.Linear: fused_linear_class()})  # peft's own Linear, one op less
    quieted = 0 if settings.body_dropout else quiet_body_dropout(model)
    try:
        with warnings.catch_warnings():  # peft 0.21 asks transformers 5 a deprecated question on every wrap
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            wrapped = get_peft_model(model, config)
    except ValueError as exc:  # e.g. "Target modules {...} not found in the base model"
        raise ConfigError(first_line(exc), where="lora.target_modules") from None
    log.info("lora: rank %d, alpha %g on %d layers; trained in full: %s; the body's hidden dropout off in %d "
             "layers (lora.body_dropout)", settings.r, settings.alpha, len(_adapted(wrapped)),
             ", ".join(heads) or "nothing else", quieted)
    return wrapped


def quiet_body_dropout(model) -> int:
    """Set p = 0 on the dropout layers of the model's body (`base_model`: not the task head's) that are
    not inside an attention module; return how many changed."""
    import torch

    quieted = 0
    for parent in getattr(model, "base_model", model).modules():
        if type(parent).__name__.endswith("Attention"):  # dropout on attention's weights, or right after it
            continue
        for child in parent.children():
            if isinstance(child, torch.nn.Dropout) and child.p > 0:
                child.p = 0.0
                quieted += 1
    return quieted


def fused_linear_class():
    """peft's LoRA Linear whose plain training forward adds the adapter's update inside one matrix
    multiply: base(x) + s * B(A(x)) as addmm(base(x), A(x), B^T, alpha=s). peft's own forward scales
    and adds the update as two more passes over every layer's full output (and their backward), 13%
    of a LoRA step on a CPU (all-MiniLM-L6-v2, batch 32); with this, a LoRA step costs less than a
    full one. Anything else (dropout on the adapter's input, several or disabled adapters, a merged
    layer, another dtype outside autocast) takes peft's own forward; merging, saving and loading are peft's.

    Evaluation and prediction (eval mode, no gradients) run the layer as a merged one would, one matrix
    multiply with W + s * B A, the merged weight computed per call (r * in * out multiply-adds, next to
    nothing beside the batch's): the adapters' two extra products per layer made LoRA's evaluation
    slower than full fine-tuning's. Nothing is merged in place, so the weights training goes on with
    (and a resumed run starts from) are untouched by an evaluation."""
    import torch
    from peft.tuners.lora.layer import Linear

    class FusedLinear(Linear):
        def forward(self, x, *args, **kwargs):
            adapters = self.active_adapters
            if (args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1
                    or adapters[0] not in self.lora_A or adapters[0] in self.lora_variant):
                return super().forward(x, *args, **kwargs)
            name = adapters[0]
            down, up = self.lora_A[name], self.lora_B[name]
            # Under autocast (bf16 training, job/training/trainers.py) every product below runs in its
            # dtype whatever x's; peft's own forward would cast x back to the adapter's fp32 instead.
            mixed = x.dtype != down.weight.dtype and not torch.is_autocast_enabled(x.device.type)
            if mixed or up.bias is not None or down.bias is not None:
                return super().forward(x, *args, **kwargs)
            if not self.training and not torch.is_grad_enabled():
                weight = torch.addmm(self.base_layer.weight, up.weight, down.weight, alpha=self.scaling[name])
                return torch.nn.functional.linear(x, weight, self.base_layer.bias)
            if not isinstance(self.lora_dropout[name], torch.nn.Identity):
                return super().forward(x, *args, **kwargs)
            result = self.base_layer(x)
            update = down(x)
            fused = torch.addmm(result.reshape(-1, result.shape[-1]), update.reshape(-1, update.shape[-1]),
                                up.weight.t(), alpha=self.scaling[name])
            return fused.view(result.shape)

    return FusedLinear


def default_targets(model, heads: list[str]) -> list[str]:
    """Full names of every linear (or Conv1D) layer but the output layer and the heads'."""
    import torch
    from transformers.pytorch_utils import Conv1D

    skip = {f"{name}." for name in heads}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, Conv1D)) or module is output:
            continue
        if any(f"{name}.".startswith(prefix) for prefix in skip):
            continue
        names.append(name)
    if not names:
        raise ConfigError(f"{type(model).__name__} has no linear layer to adapt; name some in lora.target_modules",
                          where="lora.target_modules")
    return names


def _adapted(model) -> list[str]:
    from peft.tuners.lora import LoraLayer

    return [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def adapter_parameters(model) -> int:
    """Parameters LoRA added to the model: the adapters and peft's trainable copy of each head."""
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" in name or ".modules_to_save." in name)


def save(trainer, settings: LoraSettings, base_name: str, path: Path) -> None:
    """Publish the trained model in `lora.publish`'s form (see the module docstring)."""
    model = trainer.model
    if settings.publish == "merged":
        merged = model.merge_and_unload()  # the adapters folded into their layers, the head's copy in place
        merged.save_pretrained(path)
    else:
        local = Path(base_name)
        model.peft_config["default"].base_model_name_or_path = str(local.resolve()) if local.exists() else base_name
        model.save_pretrained(path)
        model.get_base_model().config.save_pretrained(path)  # labels, for predict and the gate
        (path / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    trainer.processing_class.save_pretrained(path)


def is_adapter(model_dir: Path) -> bool:
    return (Path(model_dir) / ADAPTER_CONFIG).is_file()


def base_of(model_dir: Path, trust_remote_code: bool):
    """(a config naming the base model a published adapter goes over, the config keyword arguments
    that size its task head): job/models/loading.py loads the base as the run loaded it."""
    from peft import PeftConfig
    from transformers import AutoConfig

    adapter = PeftConfig.from_pretrained(model_dir)
    trained = AutoConfig.from_pretrained(model_dir)
    kwargs = {key: getattr(trained, key) for key in ("id2label", "label2id", "problem_type") if getattr(trained, key, None) is not None}
    model = ModelConfig(name=adapter.base_model_name_or_path, revision=adapter.revision, trust_remote_code=trust_remote_code)
    return JobConfig(model=model), kwargs


def attach(base, model_dir: Path):
    """A published adapter over its loaded base, unmerged: the adapters run beside the layers they adapt."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, model_dir).eval()
