"""A text classifier whose head reads a pooled sentence vector: what head-only training publishes.

    import job.models.pooled  # registers the class with transformers' Auto classes
    model = AutoModelForSequenceClassification.from_pretrained("outputs/<run-id>/model")

Why a class of our own: transformers' BertForSequenceClassification reads [CLS] through its pooler,
so a head trained on mean-pooled token vectors (what sentence-embedding checkpoints such as
all-MiniLM-L6-v2 were trained to give) cannot be expressed in it. This class is any `AutoModel` body
(its config nested under `body`) plus `PooledHead`, one linear layer over the pooled vector:

- `pooling: mean`: the mean of the last hidden states over the real (unpadded) tokens;
- `pooling: cls`: the first token's last hidden state.

Head-only training (job/training/head_only.py) runs the frozen body once per row, trains a `PooledHead` on
the cached vectors, then assembles body and head into this class; both paths call the same `pool`
and the same head, so the published model predicts what the head predicted during the run. The
directory is an ordinary `save_pretrained` one (config.json with `model_type: finetune-job-pooled`,
model.safetensors, the tokenizer); loading it needs only this module imported first.
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "finetune-job-pooled"


@strict
class PooledClassifierConfig(PreTrainedConfig):
    model_type = MODEL_TYPE
    sub_configs_defaults = {"body": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    body: PreTrainedConfig | dict | None = None  # the encoder's own config (BertConfig, RobertaConfig, ...)
    pooling: str = "mean"
    classifier_dropout: float = 0.0


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """One vector per row from the last hidden states (rows x tokens x hidden)."""
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class PooledHead(nn.Module):
    """Dropout and one linear layer over pooled vectors, with the loss transformers' classifiers use
    for the config's problem_type. Trained alone on cached vectors (`features`), or inside the model."""

    def __init__(self, size: int, num_labels: int, problem_type: str | None, dropout: float = 0.0):
        super().__init__()
        self.num_labels, self.problem_type = num_labels, problem_type
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(size, num_labels)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.classifier(self.dropout(features))
        loss = None
        if labels is not None:
            if self.problem_type == "regression":
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            elif self.problem_type == "multi_label_classification":
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


class PooledTextClassifier(PreTrainedModel):
    config_class = PooledClassifierConfig
    base_model_prefix = "body"
    main_input_name = "input_ids"

    def __init__(self, config: PooledClassifierConfig):
        super().__init__(config)
        self.body = AutoModel.from_config(config.body)
        # hidden_size: transformers maps it to each family's own name (DistilBERT's dim, T5's d_model)
        self.head = PooledHead(config.body.hidden_size, config.num_labels, config.problem_type, config.classifier_dropout)
        self.post_init()

    @classmethod
    def around(cls, body: PreTrainedModel, pooling: str, **config_kwargs) -> "PooledTextClassifier":
        """A classifier over a loaded `body` (its pretrained weights kept), with a new head. The
        constructor's own body is built on the meta device (no memory, no random initialisation: 1.8 s
        for all-MiniLM-L6-v2's, thrown away), then replaced; the head is built for real."""
        config = PooledClassifierConfig(body=body.config, pooling=pooling, **config_kwargs)
        with torch.device("meta"):
            model = cls(config)
        model.body = body
        model.head = PooledHead(body.config.hidden_size, config.num_labels, config.problem_type, config.classifier_dropout)
        model._init_weights(model.head.classifier)  # as post_init would have: the config's initializer_range
        return model

    def get_input_embeddings(self):
        return self.body.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.body(**inputs).last_hidden_state
        return self.head(pool(hidden, attention_mask, self.config.pooling), labels)


AutoConfig.register(MODEL_TYPE, PooledClassifierConfig, exist_ok=True)
AutoModelForSequenceClassification.register(PooledClassifierConfig, PooledTextClassifier, exist_ok=True)
