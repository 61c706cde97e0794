"""Tokens per second and MFU (job/training/throughput.py), and the attention kernel setting."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import DEMO, ROOT, write_yaml


def _cfg(tmp_path, raw: dict):
    from job.cli import config_loader

    return config_loader.load(str(write_yaml(tmp_path / "job.yaml", raw)), use_env=False)


def test_flops_per_token_is_palms_6n_plus_12lhqt_on_gpt2_small():
    from transformers import GPT2Config, GPT2LMHeadModel

    from job.training import throughput

    model = GPT2LMHeadModel(GPT2Config())  # GPT-2 small: 12 layers, 12 heads, 768 wide, 50257 tokens
    per_layer = 768 * 2304 + 768 * 768 + 768 * 3072 + 3072 * 768  # qkv, attention out, MLP in and out (Conv1D)
    n = 12 * per_layer + 50257 * 768  # ... and the output head, tied to the input embedding yet a real product
    assert throughput.matmul_weights(model) == n == 123_532_032
    assert throughput.flops_per_token(model, 1024) == 6 * n + 12 * 12 * 12 * 64 * 1024


def test_encoder_decoders_get_no_flops_figure():
    from transformers import T5Config, T5ForConditionalGeneration

    from job.training import throughput

    model = T5ForConditionalGeneration(T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, vocab_size=50))
    assert throughput.flops_per_token(model, 10) is None


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0),
    ("NVIDIA L40", 181.0), ("NVIDIA A10", 125.0), ("NVIDIA A10G", None), ("Tesla V100-SXM2-16GB", None), ("Tesla T4", None),
])
def test_dense_bf16_peaks_by_device_name(name, tflops):
    from job.training import throughput

    assert throughput.peak_bf16_tflops(name) == tflops


def _train(tmp_path, raw: dict):
    """The recipe of job/recipes/run.py up to training, in this process; returns (train metrics, train features, spec)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_gpu import job_recipe  # the run recipe's steps up to a Trainer, as the benchmarks measure them

    trainer, features, spec = job_recipe(_cfg(tmp_path, raw), tmp_path)
    return trainer.train().metrics, features["train"], spec


@pytest.mark.parametrize("task", ["text-classification", "causal-lm"])
def test_train_tokens_are_the_non_padding_tokens_of_every_epoch(tmp_path, task):
    """Two epochs over the training rows: train_tokens is twice the sum of their lengths, though
    batches were padded (text-classification) or packed into padded rows (causal-lm)."""
    raw = {
        "task": task,
        "data": {"train_files": str(DEMO / "reviews.train.jsonl"), "validation_files": str(DEMO / "reviews.validation.jsonl"),
                 "test_files": str(DEMO / "reviews.test.jsonl"), "max_train_samples": 96, "max_length": 64, "label_names": ["negative", "positive"]},
        "training": {"num_train_epochs": 2, "per_device_train_batch_size": 16, "eval_strategy": "no", "report_to": "none"},
    }
    metrics, train, spec = _train(tmp_path, raw)
    assert getattr(spec, "packing", None) == ("rows" if task == "causal-lm" else None)
    assert metrics["train_tokens"] == 2 * sum(train["length"]) > 0
    assert metrics["train_tokens_per_second"] == pytest.approx(metrics["train_tokens"] / metrics["train_runtime"], rel=1e-3)
    assert metrics["train_mfu"] is None  # no GPU here
    # The loop waited for every batch it collated (in this process: no DataLoader workers), never longer than it trained.
    assert 0 < metrics["train_data_wait_seconds"] < metrics["train_runtime"]


def test_attention_kernel_setting(tmp_path):
    from job import models, tasks
    from job.errors import ModelError

    task = tasks.get("causal-lm")
    texts = ["a cat sat on the mat", "two dogs run"]

    def load(attention):
        raw = {"task": "causal-lm", "model": {"attn_implementation": attention}, "data": {"train_files": "x.txt"}}
        return models.load(_cfg(tmp_path, raw), task, None, [{"text": t} for t in texts], tmp_path)[1]

    assert load(None).config._attn_implementation == "sdpa"  # transformers' default
    assert load("eager").config._attn_implementation == "eager"
    if importlib.util.find_spec("flash_attn") is not None:
        return
    with pytest.raises(ModelError, match="FlashAttention2 .* doesn't seem to be installed") as caught:
        load("flash_attention_2")  # no flash_attn package on this machine
    assert caught.value.where == "model.attn_implementation" and "\n" not in str(caught.value)
