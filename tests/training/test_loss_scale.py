"""One optimizer step's gradient is the same whether its 32 rows come as one batch or as micro-batches
accumulated: for a classifier, whose loss is its own mean (Trainer alone doubled it with 2 micro-batches),
and for a causal LM, whose summed loss is divided by the global count of tokens (rows of different
lengths, so a mean of micro-batch means would differ). Dropout is off: the masks are not the point here."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import (BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM, TrainerCallback,
                          TrainingArguments)

from job import tasks
from job.training import trainers


def _classifier():
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return "text-classification", BertForSequenceClassification(config), lambda ids, i: i % 2


def _causal_lm():
    config = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         intermediate_size=64)
    return "causal-lm", LlamaForCausalLM(config), lambda ids, i: ids if i < 16 else ids[:3] + [-100] * 5  # 8 or 3 tokens


class _GradNorm(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)).item()


def _first_step(build, per_device: int, accumulation: int, tmp_path) -> tuple[float, float, object]:
    """(gradient norm, logged loss, trainer) of one optimizer step over the same 32 rows."""
    torch.manual_seed(0)
    task, model, label = build()
    generator = torch.Generator().manual_seed(1)
    ids = [torch.randint(5, 100, (8,), generator=generator).tolist() for _ in range(32)]
    rows = Dataset.from_dict({"input_ids": ids, "labels": [label(row, i) for i, row in enumerate(ids)]})
    args = TrainingArguments(str(tmp_path / "out"), per_device_train_batch_size=per_device, max_steps=1,
                             gradient_accumulation_steps=accumulation, learning_rate=0.0, max_grad_norm=1e9,
                             train_sampling_strategy="sequential", report_to="none", use_cpu=True, save_strategy="no",
                             logging_steps=1, disable_tqdm=True)
    trainer = trainers._trainer_class(tasks.get(task))(model=model, args=args, train_dataset=rows)
    norm = _GradNorm()
    trainer.add_callback(norm)
    loss = trainer.train().training_loss
    return norm.norm, loss, trainer


@pytest.mark.parametrize("build, uses_count", [(_classifier, False), (_causal_lm, True)], ids=["classifier", "causal-lm"])
def test_accumulated_micro_batches_make_the_gradient_of_one_batch(build, uses_count, tmp_path):
    whole, whole_loss, _ = _first_step(build, 32, 1, tmp_path)
    for per_device, accumulation in ((16, 2), (8, 4)):
        norm, loss, trainer = _first_step(build, per_device, accumulation, tmp_path)
        assert norm == pytest.approx(whole, rel=1e-5) and loss == pytest.approx(whole_loss, rel=1e-5), (per_device, accumulation)
        assert trainer.item_count_used is uses_count and trainer.model_accepts_loss_kwargs is uses_count


def test_the_model_is_asked_once(tmp_path, monkeypatch):
    asked = []
    real = trainers._ignores_item_count
    monkeypatch.setattr(trainers, "_ignores_item_count", lambda *a: asked.append(1) or real(*a))
    _, _, trainer = _first_step(_causal_lm, 8, 4, tmp_path)  # uses the count: Trainer keeps passing it
    trainer.args.max_steps = 3
    trainer.train()  # 3 more steps of 4 micro-batches
    assert asked == [1]  # two extra forward passes, once, not at every step
