"""Padding-free packing for causal-lm: whole documents in one row, each attending only to itself.

Checked on the models transformers builds for GPT-2 and Llama, with sdpa and eager attention, for
both batch layouts (padded rows; one flat row, FlashAttention's): a packed batch gives every token the
loss it gets when its document is run alone (within PACKED_LOSS_TOLERANCE nats), and changing the
tokens of one document leaves the logits of the next one in the same row unchanged. On a machine
with a GPU the same checks run on it too (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import gzip

import pytest

from conftest import SHARED, write_yaml

MULTI30K = SHARED / "data" / "multi30k-en-de" / "train.en.gz"
PACKED_LOSS_TOLERANCE = 1e-5  # nats per token, float32 (on a GPU: 1e-4, its kernels sum in other orders)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="no GPU"))]
ARCHITECTURES = ["gpt2", "llama"]


def _captions(count: int) -> list[str]:
    if MULTI30K.is_file():
        with gzip.open(MULTI30K, "rt", encoding="utf-8") as f:
            return [line.strip() for line, _ in zip(f, range(count))]
    return [f"a person number {i} walks {'far ' * (i % 7)}along the road ." for i in range(count)]  # ../shared absent


def _cfg(tmp_path, **task):
    from job.cli import config_loader

    path = write_yaml(tmp_path / "lm.yaml", {"task": {"name": "causal-lm", **task}, "data": {"train_files": "x.txt", "max_length": 48}})
    return config_loader.load(str(path), use_env=False)


def _model(architecture: str, attention: str, vocabulary: int):
    """A tiny random model, without the cache, as Trainer runs it (training.use_cache is false)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if architecture == "gpt2":
        config = GPT2Config(vocab_size=vocabulary, n_embd=32, n_layer=2, n_head=2, n_positions=64, attn_implementation=attention, use_cache=False)
        return GPT2LMHeadModel(config).eval()
    config = LlamaConfig(vocab_size=vocabulary, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=64, attn_implementation=attention, use_cache=False)
    return LlamaForCausalLM(config).eval()


def _packed_features(tmp_path, packing: str, texts: list[str]):
    """The job's own preprocessing of `texts` as training blocks, its tokenizer and collator."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from job import tasks
    from job.models import builtin
    from job.data.rows import ROW_ID

    task = tasks.get("causal-lm")
    cfg = _cfg(tmp_path)
    tokenizer, _ = builtin.build("builtin:tiny-gpt", iter(texts), AutoModelForCausalLM, {}, seed=0)
    splits = {"train": Dataset.from_dict({"text": texts, ROW_ID: list(range(len(texts)))})}
    spec = task.inspect(splits, cfg)
    spec.packing = packing
    blocks = task.preprocess(splits, tokenizer, cfg, spec)["train"]
    collate = task.collator(tokenizer, cfg, spec, pad_to_multiple_of=8)
    return tokenizer, blocks, collate


def test_pack_keeps_documents_whole_in_order_and_numbers_their_positions():
    from job.tasks.language_model import pack

    packed = pack([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11], [12]], size=5)
    assert packed["input_ids"] == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12]]  # the 6-token document cut at 5
    assert packed["position_ids"] == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 4], [0, 0]]
    assert packed["length"] == [5, 5, 2]
    assert pack([], size=5) == {"input_ids": [], "position_ids": [], "length": []}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["rows", "flat"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_packed_batch_gives_each_token_the_loss_of_its_document_alone(tmp_path, architecture, attention, layout, device):
    import torch

    from job.tasks.language_model import token_losses

    tokenizer, blocks, collate = _packed_features(tmp_path, layout, _captions(40))
    model = _model(architecture, attention, len(tokenizer)).to(device)
    batch = collate([blocks[i] for i in range(4)])
    if layout == "flat":
        assert batch["input_ids"].shape[0] == 1 and "cu_seq_lens_q" in batch  # one row, FlashAttention's boundaries
    else:
        assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] % 8 == 0
    assert "attention_mask" not in batch
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with torch.no_grad():
        out = model(**batch)
        packed = token_losses(out.logits, batch["labels"], shift=True)
        alone, compared, total, worst = [], 0, 0.0, 0.0
        for row in range(batch["input_ids"].shape[0]):
            positions = batch["position_ids"][row].tolist()
            starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
            for a, b in zip(starts, starts[1:]):
                b = a + 1 + int((batch["labels"][row, a + 1 : b] != -100).sum())  # without the padding that extends the last one
                if b - a < 2:
                    continue  # a one-token document has nothing to predict
                ids = batch["input_ids"][row, a:b].unsqueeze(0)
                own = model(input_ids=ids, labels=ids)
                losses = token_losses(own.logits, ids, shift=True)[0, 1:]
                alone.append(own.loss.item() * (b - a - 1))
                total += b - a - 1
                difference = (packed[row, a + 1 : b] - losses).abs().max().item()
                worst = max(worst, difference)
                assert difference <= (PACKED_LOSS_TOLERANCE if device == "cpu" else 1e-4), (row, a, difference)
                compared += 1
    print(f"{architecture} {attention} {layout} {device}: {compared} documents, max |packed - alone| {worst:.2e} nats per token")
    assert compared >= 8  # documents, not blocks, were compared
    assert out.loss.item() == pytest.approx(sum(alone) / total, abs=PACKED_LOSS_TOLERANCE if device == "cpu" else 1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_no_token_attends_across_a_document_boundary(tmp_path, architecture, attention, device):
    """Changing document A leaves the logits of document B, packed after it in the same row,
    unchanged; with the documents concatenated into one block (packing off) it does not."""
    import torch

    tokenizer, blocks, collate = _packed_features(tmp_path, "rows", _captions(12))
    model = _model(architecture, attention, len(tokenizer)).to(device)
    row = collate([blocks[0]])
    starts = [i for i, p in enumerate(row["position_ids"][0].tolist()) if p == 0]
    assert len(starts) >= 3
    a, b = starts[0], starts[1]  # document A is row[a:b], B starts at b
    changed = {k: v.clone() for k, v in row.items()}
    changed["input_ids"][0, a:b] = (changed["input_ids"][0, a:b] + 7) % len(tokenizer)

    def logits_of_b(batch, packed=True):
        inputs = {"input_ids": batch["input_ids"].to(device)}
        if packed:
            inputs["position_ids"] = batch["position_ids"].to(device)
        with torch.no_grad():
            return model(**inputs, use_cache=False).logits[0, b:starts[2]]

    assert (logits_of_b(row) - logits_of_b(changed)).abs().max().item() <= 1e-6
    # Control: the same row as one block (no position ids) lets B see A, so the check can fail.
    assert (logits_of_b(row, packed=False) - logits_of_b(changed, packed=False)).abs().max().item() > 1e-3


def test_padded_rows_and_flat_rows_count_exactly_their_real_tokens(tmp_path):
    from job.training import throughput

    tokenizer, blocks, collate = _packed_features(tmp_path, "rows", _captions(60))
    features = [blocks[i] for i in range(len(blocks))][:5]
    real = sum(len(f["input_ids"]) for f in features)
    documents = sum(f["position_ids"].count(0) for f in features)
    rows = collate(features)
    assert rows["input_ids"].numel() > real  # rows of unequal lengths were padded ...
    padding = (rows["labels"] == -100) & (rows["position_ids"] != 0)
    assert padding.any() and (rows["position_ids"][:, 1:] - rows["position_ids"][:, :-1])[padding[:, 1:]].eq(1).all()  # extends the last document
    tokens, sequences = throughput.batch_tokens(rows)
    assert (int(tokens), int(sequences)) == (real, documents)  # ... and the padding is not counted
    _, _, flat_collate = _packed_features(tmp_path, "flat", _captions(60))
    flat = flat_collate(features)
    assert flat["input_ids"].shape == (1, real) and flat["cu_seq_lens_q"].tolist()[-1] == real
    assert [int(n) for n in throughput.batch_tokens(flat)] == [real, documents]


def test_test_rows_are_not_packed(tmp_path):
    from datasets import Dataset

    from job.data.rows import ROW_ID

    tokenizer, _, collate = _packed_features(tmp_path, "rows", _captions(20))
    from job import tasks

    task = tasks.get("causal-lm")
    cfg = _cfg(tmp_path)
    splits = {"test": Dataset.from_dict({"text": _captions(3), ROW_ID: [0, 1, 2]})}
    spec = task.inspect(splits, cfg)
    spec.packing = "rows"
    test = task.preprocess(splits, tokenizer, cfg, spec)["test"]
    assert "position_ids" not in test.column_names and test[ROW_ID] == [0, 1, 2]
    batch = collate([{"input_ids": test[i]["input_ids"]} for i in range(3)])
    assert batch["attention_mask"].sum(-1).tolist() == [len(ids) for ids in test["input_ids"]]  # a row each, padded


def test_packing_auto_follows_what_the_model_does(tmp_path):
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    from job.errors import ModelError
    from job.tasks import causal_lm, language_model

    spec = language_model.Spec("text")
    gpt2 = _model("gpt2", "sdpa", 100)
    assert causal_lm.fit_to_model(spec, gpt2, _cfg(tmp_path)).packing == "rows"
    assert causal_lm.fit_to_model(spec, gpt2, _cfg(tmp_path, packing=False)).packing is None
    torch.manual_seed(0)
    opt = OPTForCausalLM(OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                                   word_embed_proj_dim=32, max_position_embeddings=64))
    assert not language_model.keeps_documents_apart(opt)  # transformers 5.24's OPT lets packed documents mix
    assert causal_lm.fit_to_model(spec, opt, _cfg(tmp_path)).packing is None
    with pytest.raises(ModelError, match="cannot pack: OPTForCausalLM with sdpa attention lets packed documents see each other"):
        causal_lm.fit_to_model(spec, opt, _cfg(tmp_path, packing=True))
    cached = _cfg(tmp_path)
    cached.training["use_cache"] = True  # a cache turns transformers' packed-sequence detection off
    assert causal_lm.fit_to_model(spec, gpt2, cached).packing is None
    assert gpt2.training is False and opt.training is True  # the check leaves the mode as it found it


def test_packing_setting_is_checked_when_the_config_loads(tmp_path):
    from job.errors import ConfigError

    assert _cfg(tmp_path).task.settings.packing == "auto"
    assert _cfg(tmp_path, packing=False).task.settings.packing is False
    with pytest.raises(ConfigError, match="choose auto, true or false, got 'yes'") as caught:
        _cfg(tmp_path, packing="yes")
    assert caught.value.where == "task.packing"
