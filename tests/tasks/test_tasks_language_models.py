"""causal-lm, masked-lm, permutation-lm: blocks, losses, collators; the pretrained stories260K Llama
fine-tuned from its GGUF file; masked LM through the real BERT uncased vocabulary."""

from __future__ import annotations

import gzip
import json
import math

import pytest

from conftest import ROOT, SHARED, base_env, read_jsonl, run_cli, run_cli_here, write_jsonl, write_yaml
from support.tiny_models import BERT_VOCAB, bert_with_real_vocab

STORIES = SHARED / "models" / "stories260K-gguf" / "stories260K.gguf"
MULTI30K = SHARED / "data" / "multi30k-en-de"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not present")


def _cfg(tmp_path, task, **data):
    from job.cli import config_loader

    return config_loader.load(str(write_yaml(tmp_path / "lm.yaml", {"task": task, "data": {"train_files": "x.txt", **data}})), use_env=False)


def _splits(rows_by_split: dict):
    from datasets import Dataset

    from job.data.rows import ROW_ID

    return {name: Dataset.from_dict({"text": rows, ROW_ID: list(range(len(rows)))}) for name, rows in rows_by_split.items()}


def test_training_text_is_cut_into_blocks_and_test_rows_stay_rows(tmp_path):
    from job import tasks
    from job.models import builtin
    from transformers import AutoModelForCausalLM

    task = tasks.get("causal-lm")
    cfg = _cfg(tmp_path, "causal-lm", max_length=8)
    texts = ["a b c d e", "f g h", "i j k l m n o p q r"]
    splits = _splits({"train": texts, "validation": texts, "test": texts})
    tokenizer, _ = builtin.build("builtin:tiny-gpt", iter(texts), AutoModelForCausalLM, {}, seed=0)
    features = task.preprocess(splits, tokenizer, cfg, task.inspect(splits, cfg))
    eos = tokenizer.eos_token_id
    blocks = features["train"]["input_ids"]
    assert [len(b) for b in blocks] == [8, 8, 5]  # 5+1, 3+1 and 10+1 tokens: 21, the last block shorter
    assert sum(blocks, []).count(eos) == 3 and sum(blocks, [])[5] == eos  # each text ends with end-of-text
    assert "__row_id" not in features["train"].column_names  # a block is no one row
    assert features["test"]["__row_id"] == [0, 1, 2]
    assert [len(ids) for ids in features["test"]["input_ids"]] == [6, 4, 8]  # truncated to one block, no room for eos
    assert features["test"]["input_ids"][0][-1] == eos


def test_token_losses_match_the_models_own_loss():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from job.tasks import language_model

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    input_ids = torch.randint(0, 50, (2, 7))
    labels = input_ids.clone()
    labels[1, 5:] = -100  # padding
    out = model(input_ids=input_ids, labels=labels)
    losses = language_model.token_losses(out.logits, labels, shift=True)
    counted = losses >= 0
    assert counted.sum() == 6 + 4  # no target at position 0, none for padding
    assert losses[counted].mean().item() == pytest.approx(out.loss.item(), rel=1e-5)


@needs_shared
def test_gguf_stories260k_loads_as_a_trainable_pretrained_llama(tmp_path):
    from transformers import AutoModelForCausalLM
    import torch

    from job.models import gguf

    tokenizer, model = gguf.load(str(STORIES), AutoModelForCausalLM, {}, {}, tmp_path)
    assert type(model).__name__ == "LlamaForCausalLM" and model.num_parameters() == 292_800
    assert not getattr(model, "is_quantized", False) and all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.pad_token_id is None  # the file's 0xFFFFFFFF is "no token", not an id
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token) == (1, 2, None) and len(tokenizer) == 512
    ids = torch.tensor([tokenizer("Once upon a time, there was a little girl named Lily. She liked to play outside.")["input_ids"]])
    assert model(input_ids=ids, labels=ids).loss.item() < 1.0  # a TinyStories sentence: it is pretrained
    assert (tmp_path / "gguf-tokenizer" / "stories260K.gguf").stat().st_size < STORIES.stat().st_size / 4


def _multi30k_english(tmp_path, sizes: dict[str, int]) -> dict[str, str]:
    names = {"train": "train.en.gz", "validation": "val.en.gz", "test": "test_2016_flickr.en.gz"}
    files = {}
    for split, size in sizes.items():
        with gzip.open(MULTI30K / names[split], "rt", encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line, _ in zip(f, range(size))]
        files[f"{split}_files"] = str(write_jsonl(tmp_path / f"{split}.jsonl", [{"text": line} for line in lines]))
    return files


@pytest.mark.slow
@needs_shared
def test_fine_tuning_stories260k_lowers_validation_perplexity(tmp_path):
    """TinyStories' model adapted to Multi30k captions: the same run at learning rate 0 is the 'before'."""
    config = ROOT / "job" / "configs" / "causal-lm-stories260k.yaml"
    sets = ("data.max_train_samples=1500", "data.max_eval_samples=300", "data.max_predict_samples=100", "data.max_length=128")

    def run(run_id, *extra):
        args = [a for s in (*sets, *extra, f"output.uri={tmp_path}") for a in ("--set", s)]
        run_cli("run", "--config", str(config), *args, env=base_env(FINETUNE_RUN_ID=run_id), cwd=ROOT, check=True)
        return json.loads((tmp_path / run_id / "metrics.json").read_text()), tmp_path / run_id

    before, _ = run("before", "training.learning_rate=1e-30", "training.max_steps=1")  # one step that moves no weight: the untrained baseline
    after, run_dir = run("after")
    print(f"stories260K on Multi30k: validation perplexity {before['eval_perplexity']:.3f} -> {after['eval_perplexity']:.3f}, "
          f"test {before['test_perplexity']:.3f} -> {after['test_perplexity']:.3f}")
    assert 3 < before["eval_perplexity"] < 100  # pretrained, though not on captions: far from 512 (uniform)
    assert after["eval_perplexity"] < 0.85 * before["eval_perplexity"]
    assert after["test_perplexity"] < before["test_perplexity"]
    assert after["eval_predicted_tokens"] == before["eval_predicted_tokens"]  # the same blocks were scored
    assert math.exp(after["eval_loss"]) == pytest.approx(after["eval_perplexity"], rel=0.05)

    rows = read_jsonl(run_dir / "predictions.jsonl")
    with gzip.open(MULTI30K / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as f:
        assert [r["text"] for r in rows] == [line.rstrip("\n") for line, _ in zip(f, range(100))]
    assert [r["id"] for r in rows] == list(range(100)) and all(r["perplexity"] > 1 for r in rows)
    assert (run_dir / "model" / "model.safetensors").is_file()  # published as an ordinary checkpoint


@pytest.mark.skipif(not BERT_VOCAB.is_file(), reason="../shared is not present")
def test_whole_word_masking_masks_every_piece_of_a_word_in_uneven_batches(tmp_path):
    """The real WordPiece vocabulary splits long words; with whole-word masking a word is masked whole,
    without it its pieces are masked one by one. Batches of unequal lengths need offset_mapping padded
    (transformers 5.24's tokenizer.pad cannot)."""
    import torch
    from transformers import AutoTokenizer

    from job import tasks

    tokenizer = AutoTokenizer.from_pretrained(bert_with_real_vocab(tmp_path / "bert"))
    task = tasks.get("masked-lm")
    texts = ["antidisestablishmentarianism and tokenization are unbelievable", "short text", "the hippopotamus ate"]
    splits = _splits({"train": texts, "validation": texts, "test": texts})
    pieces = [tokenizer.convert_ids_to_tokens(tokenizer(t)["input_ids"]) for t in texts]
    # (row, position of a continuation piece, position of its word's first piece)
    continuations = [(row, i, max(j for j in range(i) if not p[j].startswith("##")))
                     for row, p in enumerate(pieces) for i in range(len(p)) if p[i].startswith("##")]
    assert len(continuations) > 10
    for whole_words in (True, False):
        cfg = _cfg(tmp_path, {"name": "masked-lm", "whole_word_mask": whole_words, "mlm_probability": 0.5}, max_length=32)
        features = task.preprocess(splits, tokenizer, cfg, task.inspect(splits, cfg))["test"]
        collate = task.collator(tokenizer, cfg, None, pad_to_multiple_of=8)
        torch.manual_seed(0)
        apart = 0  # a piece masked while its word's first piece is not, or the other way round
        for _ in range(20):
            batch = collate([features[i] for i in range(3)])
            assert batch["input_ids"].shape == (3, 16) and set(batch) == {"input_ids", "attention_mask", "labels"}
            masked = batch["labels"] != -100
            apart += sum(bool(masked[row, i] != masked[row, start]) for row, i, start in continuations)
        assert (apart == 0) if whole_words else (apart > 20)


@pytest.mark.slow
@pytest.mark.skipif(not BERT_VOCAB.is_file(), reason="../shared is not present")
def test_masked_lm_with_the_real_bert_vocabulary_with_and_without_whole_word_masking(tmp_path):
    folder = bert_with_real_vocab(tmp_path / "bert")
    files = _multi30k_english(tmp_path, {"train": 1000, "validation": 200, "test": 50})
    losses = {}
    for whole_words in (False, True):
        cfg = {
            "task": {"name": "masked-lm", "whole_word_mask": whole_words},
            "model": {"name": str(folder)},
            "data": {**files, "max_length": 64},
            "output": {"uri": str(tmp_path / "out")},
            "training": {"num_train_epochs": 2, "learning_rate": 0.003, "warmup_steps": 10, "per_device_train_batch_size": 16,
                         "per_device_eval_batch_size": 32, "logging_steps": 20, "eval_strategy": "no"},
        }
        run_id = f"wwm-{whole_words}".lower()
        path = write_yaml(tmp_path / f"{run_id}.yaml", cfg)
        run_cli_here("run", "--config", str(path), env=base_env(FINETUNE_RUN_ID=run_id), cwd=tmp_path, check=True)
        losses[whole_words] = json.loads((tmp_path / "out" / run_id / "metrics.json").read_text())
    print("masked LM eval loss (perplexity): " + ", ".join(
        f"whole_word_mask={k}: {m['eval_loss']:.3f} ({m['eval_perplexity']:.1f})" for k, m in losses.items()))
    for metrics in losses.values():
        assert metrics["eval_loss"] < math.log(30522) - 2  # learned from ln(30522) = 10.3, a uniform guess
        assert metrics["eval_predicted_tokens"] > 0
    assert losses[True]["eval_predicted_tokens"] != losses[False]["eval_predicted_tokens"]  # masked differently


def test_permutation_collator_pads_to_an_even_length_with_an_attention_mask(tmp_path):
    import torch
    from transformers import XLNetLMHeadModel

    from job import tasks
    from job.models import builtin

    task = tasks.get("permutation-lm")
    texts = ["one two three", "four five six seven eight nine ten", "eleven"]
    tokenizer, model = builtin.build("builtin:tiny-xlnet", iter(texts * 5), XLNetLMHeadModel, {}, seed=0)
    cfg = _cfg(tmp_path, "permutation-lm")
    splits = _splits({"train": texts, "validation": texts, "test": texts})
    features = task.preprocess(splits, tokenizer, cfg, task.inspect(splits, cfg))["test"]
    lengths = [len(ids) for ids in features["input_ids"]]
    assert max(lengths) % 2 == 1  # odd: transformers' collator alone raised here
    torch.manual_seed(0)
    batch = task.collator(tokenizer, cfg, None, pad_to_multiple_of=None)([features[i] for i in range(3)])
    width = max(lengths) + 1
    assert batch["input_ids"].shape == (3, width) and batch["perm_mask"].shape == (3, width, width)
    assert batch["attention_mask"].sum(-1).tolist() == lengths
    assert ((batch["labels"] != -100) <= batch["attention_mask"].bool()).all()  # padding is never a target
    assert (batch["labels"] != -100).any(-1).all()  # spans laid over padding are drawn again: every row has a target
    out = model(**batch)
    assert torch.isfinite(out.loss)
