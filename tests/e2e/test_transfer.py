"""Transfer learning, `model.train`: head (a pooled head on the frozen body's cached vectors), lora (peft
adapters) and all. Fast tests on the builtin tiny models; slow ones on the genuinely pretrained
all-MiniLM-L6-v2 and stories260K from ../shared, on a subset of the rows."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from conftest import DEMO, ROOT, SHARED, base_env, read_jsonl, run_cli, run_cli_here, tiny_config, write_jsonl, write_yaml
from support import rotten_tomatoes
from job.cli import config_loader
from job.errors import ConfigError

MINILM = SHARED / "models" / "all-MiniLM-L6-v2"
STORIES = SHARED / "models" / "stories260K-gguf" / "stories260K.gguf"
needs_shared = pytest.mark.skipif(not MINILM.is_dir(), reason="../shared is not present")


def _run(tmp_path: Path, cfg: dict, run_id: str, *sets: str, env=None):
    path = write_yaml(tmp_path / f"{run_id}.yaml", cfg)
    args = ["run", "--config", str(path)] + [a for s in sets for a in ("--set", s)]
    proc = run_cli_here(*args, env=env or base_env(FINETUNE_RUN_ID=run_id), cwd=tmp_path, check=True)
    return proc, Path(cfg["output"]["uri"]) / run_id


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _predict(model_dir: Path, rows_file: Path, out: Path) -> list[dict]:
    run_cli_here("predict", "--model", str(model_dir), "--input", str(rows_file), "--output", str(out), check=True)
    return read_jsonl(out)


def _same_predictions(a: list[dict], b: list[dict], tolerance: float = 1e-4) -> None:
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert [r["predicted"] for r in a] == [r["predicted"] for r in b]
    worst = max(abs(x["probabilities"][k] - y["probabilities"][k]) for x, y in zip(a, b) for k in x["probabilities"])
    assert worst <= tolerance, worst


# ---------------------------------------------------------------------------------------------- config


def _load(tmp_path, *sets: str):
    path = write_yaml(tmp_path / "job.yaml", {"data": {"dataset": "builtin:sentiment-demo"}})
    return config_loader.load(str(path), sets, use_env=False)


@pytest.mark.parametrize(
    "sets, where, message",
    [
        (("model.train=middle",), "model.train (--set)", "choose one of all, head, lora, got 'middle'"),
        (("model.pooling=max",), "model.pooling (--set)", "choose one of mean, cls, got 'max'"),
        (("model.train=head", "task.name=seq2seq"), "model.train (--set)",
         "head-only training reads one pooled vector per row: text-classification only; for seq2seq use lora or all"),
        (("model.train=head", "data.streaming=true", "training.max_steps=5"), "model.train (--set)", "cannot stream"),
        (("lora.r=0",), "lora.r (--set)", "must be at least 1, got 0"),
        (("lora.dropout=1",), "lora.dropout (--set)", "must be at least 0 and below 1, got 1"),
        (("lora.target_modules=[]",), "lora.target_modules (--set)", "name at least one layer"),
        (("lora.publish=both",), "lora.publish (--set)", "choose one of merged, adapter, got 'both'"),
        (("model.train=lora", "lora.publish=adapter"), "lora.publish (--set)",
         "builtin:tiny-bert is built from the training data (it cannot be loaded again); publish merged"),
    ],
)
def test_conflicting_transfer_settings_are_one_line_at_load(tmp_path, sets, where, message):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, *sets)
    text = err.value.format_message()
    assert text.startswith(f"config error: {where}: "), text
    assert message in text and "\n" not in text, text


def test_each_mode_gets_its_own_learning_rate_unless_the_user_sets_one(tmp_path):
    from job import training

    def args(*sets):
        return training.arguments(_load(tmp_path, *sets), tmp_path / "trainer", progress_bars=False)

    assert args("model.train=all").learning_rate == 5e-5  # Trainer's own
    head = args("model.train=head")
    assert (head.learning_rate, head.num_train_epochs, head.per_device_train_batch_size) == (1e-2, 3, 32)
    assert args("model.train=lora").learning_rate == 1e-3
    chosen = args("model.train=head", "training.learning_rate=0.3", "training.num_train_epochs=2")
    assert (chosen.learning_rate, chosen.num_train_epochs) == (0.3, 2)


# ---------------------------------------------------------------------------------------------- tiny models


def test_head_only_publishes_the_frozen_body_and_a_head_that_predict_reproduces(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModel

    from job.models import builtin

    proc, run_dir = _run(tmp_path, tiny_config(str(tmp_path / "out"), model={"train": "head"}), "head")
    assert "the frozen body read 600 rows" in proc.stderr  # 480 + 60 + 60: each row once, not once per epoch
    metrics = _metrics(run_dir)
    assert metrics["train_mode"] == "head"
    assert metrics["trainable_parameters"] == 64 * 2 + 2  # one linear layer over the 64-wide vector
    assert f"model.train head: 130 of {metrics['total_parameters']:,} parameters trained" in (run_dir / "report.html").read_text()
    published = load_file(run_dir / "model" / "model.safetensors")
    assert metrics["total_parameters"] == sum(t.numel() for t in published.values())
    _, body = builtin.build("builtin:tiny-bert", (r["text"] for r in read_jsonl(DEMO / "reviews.train.jsonl")),
                            AutoModel, {}, seed=42)
    initial = body.state_dict()
    assert {k.removeprefix("body.") for k in published if k.startswith("body.")} == set(initial)
    assert all(published[f"body.{k}"].equal(v) for k, v in initial.items())  # the body did not change
    assert json.loads((run_dir / "model" / "config.json").read_text())["model_type"] == "finetune-job-pooled"
    # The published model run on the text gives what the head gave on the cached vectors.
    _same_predictions(_predict(run_dir / "model", DEMO / "reviews.test.jsonl", tmp_path / "p.jsonl"),
                      read_jsonl(run_dir / "predictions.jsonl"), tolerance=1e-5)


def _lora_parameters(model, r: int, heads: tuple[str, ...] = ("classifier",)) -> int:
    """What LoRA should train: r x (in + out) per linear layer outside the head, plus the head."""
    import torch

    adapters = sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and not name.startswith(heads))
    return adapters + sum(p.numel() for name in heads for p in getattr(model, name).parameters())


def test_lora_fused_layer_computes_what_peft_computes_and_merges_the_same(tmp_path):
    """job/models/lora.py adds the adapter's update inside one addmm (and evaluates with the merged weight):
    outputs, gradients, evaluation outputs and the merged model must be peft's own, and a layer with
    adapter dropout must fall back to peft's forward in training."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    from job.models import lora

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64, num_labels=2))
    targets = lora.default_targets(base, ["classifier"])

    def wrapped(fused: bool, dropout: float = 0.0):
        settings = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets,
                              modules_to_save=["classifier"])
        if fused:
            settings._register_custom_module({torch.nn.Linear: lora.fused_linear_class()})
        return get_peft_model(copy.deepcopy(base), settings)

    plain, fused = wrapped(False), wrapped(True)
    with torch.no_grad():  # B starts at zero; give the update something to add
        for name, p in plain.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    fused.load_state_dict(plain.state_dict())
    assert type(fused.base_model.model.bert.encoder.layer[0].attention.self.query).__name__ == "FusedLinear"
    batch = {"input_ids": torch.randint(0, 100, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long),
             "labels": torch.tensor([0, 1, 1])}
    for model in (plain, fused):
        model.eval()
        model(**batch).loss.backward()
    assert torch.allclose(plain(**batch).logits, fused(**batch).logits, atol=1e-6)
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    for name, p in fused.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, grads[name], atol=1e-6), name
    calls = []
    query = fused.base_model.model.bert.encoder.layer[0].attention.self.query
    query.lora_A["default"].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():  # evaluation: the fused layer multiplies once by the merged weight, no adapter pass
        assert torch.allclose(plain(**batch).logits, fused(**batch).logits, atol=1e-6)
        assert not calls
        before = {n: p.clone() for n, p in fused.named_parameters()}
        with plain.disable_adapter():  # the adapters do change the outputs
            assert not torch.allclose(fused(**batch).logits, plain(**batch).logits, atol=1e-4)
    assert all(torch.equal(p, before[n]) for n, p in fused.named_parameters())  # nothing merged in place
    assert torch.allclose(plain.merge_and_unload()(**batch).logits, fused.merge_and_unload()(**batch).logits, atol=1e-6)
    peft_dropout, fused_dropout = wrapped(False, dropout=0.5).train(), wrapped(True, dropout=0.5).train()
    fused_dropout.load_state_dict(peft_dropout.state_dict())
    outputs = []
    for model in (peft_dropout, fused_dropout):  # the same masks drawn: the fused layer took peft's own forward
        torch.manual_seed(1)
        outputs.append(model(**batch).logits)
    assert torch.equal(*outputs)
    # bf16 autocast (the default training on a CPU with bf16 instructions) keeps the fused multiply: peft's
    # own forward casts the input back to the adapter's fp32, and its fp32 output runs every op after in fp32.
    plain, fused = wrapped(False).train(), wrapped(True).train()  # merge_and_unload took the adapters out
    fused.load_state_dict(plain.state_dict())
    seen, dense = [], fused.base_model.model.bert.encoder.layer[0].output.dense  # its input: a bf16 product's
    dense.register_forward_hook(lambda _, inputs, out: seen.append((inputs[0].dtype, out.dtype)))
    dense.lora_A["default"].register_forward_hook(lambda _, inputs, out: seen.append((inputs[0].dtype, out.dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_logits = fused(**batch).logits
        assert seen == [(torch.bfloat16, torch.bfloat16)] * 2
        assert torch.allclose(bf16_logits.float(), plain(**batch).logits.float(), atol=0.05)


def test_lora_turns_off_the_frozen_bodys_hidden_dropout_unless_asked_to_keep_it():
    """lora.body_dropout: false (the default) sets p = 0 on the body's dropout on hidden states; the
    dropout inside attention, the task head's and the model's config are left as they were."""
    import copy

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from job import tasks
    from job.config import LoraConfig
    from job.models import lora

    base = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64, num_labels=2))
    task = tasks.get("text-classification")

    def dropout(settings: LoraConfig) -> dict[str, float]:
        model = lora.wrap(copy.deepcopy(base), settings, task)
        assert model.config.hidden_dropout_prob == 0.1  # what the published model's config.json says
        return {name.removeprefix("base_model.model."): module.p for name, module in model.named_modules()
                if isinstance(module, torch.nn.Dropout) and "lora_" not in name}

    quiet, kept = dropout(LoraConfig()), dropout(LoraConfig(body_dropout=True))
    assert set(kept.values()) == {0.1}
    hidden = ["bert.embeddings.dropout"] + [f"bert.encoder.layer.{i}.{where}.dropout"
                                            for i in range(2) for where in ("attention.output", "output")]
    assert sorted(name for name, p in quiet.items() if p == 0.0) == sorted(hidden)
    assert quiet["dropout"] == 0.1 and quiet["bert.encoder.layer.1.attention.self.dropout"] == 0.1


def test_lora_trains_only_the_adapters_and_the_head_and_publishes_an_ordinary_model(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from job.models import builtin

    # fp32: predict then reproduces the run to float32's rounding (in bf16, the default on a CPU with
    # bf16 instructions, to bf16's unless batched alike: test_run_local's test_predict_command_*).
    cfg = tiny_config(str(tmp_path / "out"), model={"train": "lora"}, lora={"r": 4}, training={"bf16": False})
    proc, run_dir = _run(tmp_path, cfg, "lora")
    _, initial = builtin.build("builtin:tiny-bert", (r["text"] for r in read_jsonl(DEMO / "reviews.train.jsonl")),
                               AutoModelForSequenceClassification, {"num_labels": 2}, seed=42)
    metrics = _metrics(run_dir)
    assert metrics["train_mode"] == "lora"
    assert metrics["trainable_parameters"] == _lora_parameters(initial, r=4)
    assert metrics["total_parameters"] == initial.num_parameters()
    assert "model.train lora trains" in proc.stderr
    published = load_file(run_dir / "model" / "model.safetensors")  # merged: the model's own names, no adapter
    assert set(published) == set(initial.state_dict())
    changed = {k for k, v in initial.state_dict().items() if not published[k].equal(v)}
    assert "classifier.weight" in changed and "bert.encoder.layer.0.attention.self.query.weight" in changed
    assert not any("embeddings" in k or "LayerNorm" in k for k in changed)  # no adapter there: untouched
    _same_predictions(_predict(run_dir / "model", DEMO / "reviews.test.jsonl", tmp_path / "p.jsonl"),
                      read_jsonl(run_dir / "predictions.jsonl"), tolerance=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not present")
@pytest.mark.parametrize("name", ["token-classification", "seq2seq", "causal-lm", "masked-lm", "permutation-lm"])
def test_lora_runs_for_every_task(name, tmp_path):
    smoke = ("data.max_train_samples=64", "data.max_eval_samples=16", "data.max_predict_samples=8",
             "training.num_train_epochs=1", "model.train=lora", "output.uri=" + str(tmp_path / "out"))
    args = ["run", "--config", str(ROOT / "job" / "configs" / f"{name}-tiny.yaml")] + [a for s in smoke for a in ("--set", s)]
    run_cli_here(*args, env=base_env(FINETUNE_RUN_ID="lora"), cwd=ROOT, check=True)
    metrics = _metrics(tmp_path / "out" / "lora")
    assert metrics["train_mode"] == "lora"
    assert 0 < metrics["trainable_parameters"] < metrics["total_parameters"] / 2


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["head", "lora"])
def test_two_workers_resume_exactly_and_the_gate_scores_the_champion(mode, s3_server, bucket, tmp_path):
    """Two gloo workers (the head-only vectors split between them and gathered), stopped by SIGTERM and
    resumed: the same model, predictions and metrics as without the stop; and the resumed run's gate
    scored the first run's model (pooled head, or merged LoRA) on its own rows."""
    from test_distributed import _config, _interrupt, _outcome

    cfg = _config(tmp_path, f"s3://{bucket}/runs", "job")
    args = ["run", "--config", str(cfg), "--set", f"model.train={mode}", "--set", "distributed.nproc_per_node=2"]
    env = base_env(**s3_server.env())
    proc = run_cli(*args, env={**env, "FINETUNE_RUN_ID": "straight"}, cwd=tmp_path, check=True)
    assert "world size 2" in proc.stderr
    code, log = _interrupt(args, {**env, "FINETUNE_RUN_ID": "preempted"}, tmp_path, at_step=25)
    assert code == 10, log[-3000:]
    proc = run_cli(*args, env={**env, "FINETUNE_RUN_ID": "preempted"}, cwd=tmp_path, check=True)
    assert "resuming from checkpoint-" in proc.stderr
    client = s3_server.client()
    straight, preempted = _outcome(client, bucket, "straight"), _outcome(client, bucket, "preempted")
    assert preempted == straight
    assert straight["metrics"]["world_size"] == 2 and straight["metrics"]["train_mode"] == mode
    assert [json.loads(line)["id"] for line in straight["predictions"].decode().splitlines()] == list(range(60))
    promoted = json.loads(client.get_object(Bucket=bucket, Key="runs/preempted/metrics.json")["Body"].read())
    assert promoted["promotion_champion_run"] == "straight"
    assert promoted["promotion_champion"] == pytest.approx(straight["metrics"]["test_f1"], abs=1e-6)


# ---------------------------------------------------------------------------------------------- all-MiniLM-L6-v2


def _minilm_config(tmp_path: Path, output: str, train_rows: int, held_out: tuple[int, int] = (200, 300), **training) -> dict:
    """`train_rows` training rows and `held_out` (validation, test) rows of the rotten_tomatoes rebuild."""
    sizes = {"train": train_rows, "validation": held_out[0], "test": held_out[1]}
    files = {f"{split}_files": str(path) for split, path in rotten_tomatoes.write(tmp_path, sizes).items()}
    # What `finetune-job predict` reads: the test texts (its labels would be ids, which predict does not map).
    write_jsonl(tmp_path / "texts.jsonl", [{"text": row["text"]} for row in read_jsonl(tmp_path / "test.jsonl")])
    return {
        "model": {"name": str(MINILM)},
        "data": {**files, "label_names": ["neg", "pos"], "max_length": 64},
        "output": {"uri": output},
        "training": {"per_device_eval_batch_size": 64, **training},
    }


@pytest.mark.slow
@needs_shared
def test_head_only_on_minilm_beats_chance_and_its_model_predicts_the_same_on_text(tmp_path):
    cfg = _minilm_config(tmp_path, str(tmp_path / "out"), train_rows=1600, bf16=False)  # predict to fp32's rounding
    cfg["model"]["train"] = "head"  # the mode's own learning rate, epochs and batch size
    _, run_dir = _run(tmp_path, cfg, "head")
    metrics = _metrics(run_dir)
    # Chance is 0.5 (balanced rows); a linear probe on these vectors reaches about 0.77 on all the data.
    assert metrics["test_accuracy"] >= 0.68, metrics["test_accuracy"]
    assert metrics["trainable_parameters"] == 384 * 2 + 2
    _same_predictions(_predict(run_dir / "model", tmp_path / "texts.jsonl", tmp_path / "p.jsonl"),
                      read_jsonl(run_dir / "predictions.jsonl"))


@pytest.mark.slow
@needs_shared
def test_lora_on_minilm_adapter_and_merged_give_the_same_predictions(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    output = str(tmp_path / "out")
    # fp32: the adapter over its base and the merged weights agree to fp32's rounding (bf16's is coarser)
    cfg = _minilm_config(tmp_path, output, train_rows=256, held_out=(64, 128), max_steps=12,
                         per_device_train_batch_size=16, bf16=False)
    cfg["model"]["train"] = "lora"
    _, adapter_dir = _run(tmp_path, cfg, "adapter", "lora.publish=adapter")
    _, merged_dir = _run(tmp_path, cfg, "merged")

    base = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=2)
    adapter = _metrics(adapter_dir)
    assert adapter["trainable_parameters"] == _lora_parameters(base, r=8) == 338_690
    assert adapter["trainable_parameters"] / adapter["total_parameters"] <= 0.02
    saved = load_file(adapter_dir / "model" / "adapter_model.safetensors")
    assert all("lora_" in key or key.startswith("base_model.model.classifier.") for key in saved), sorted(saved)[:5]
    assert sum(t.numel() for t in saved.values()) == adapter["trainable_parameters"]
    # Same seed, same steps: the adapter loaded over the base and the merged model predict alike.
    from_adapter = _predict(adapter_dir / "model", tmp_path / "texts.jsonl", tmp_path / "a.jsonl")
    from_merged = _predict(merged_dir / "model", tmp_path / "texts.jsonl", tmp_path / "m.jsonl")
    _same_predictions(from_adapter, from_merged)
    _same_predictions(from_adapter, read_jsonl(adapter_dir / "predictions.jsonl"))
    # The second run's gate scored the first (an adapter) on the same test rows: the adapter's own score.
    merged = _metrics(merged_dir)
    assert merged["promotion_champion_run"] == "adapter"
    assert merged["promotion_champion"] == pytest.approx(adapter["test_f1"], abs=1e-6)


@pytest.mark.slow
@needs_shared
@pytest.mark.parametrize("mode, at_step", [("all", 8), ("head", 20), ("lora", 8)])
def test_a_resumed_run_ends_as_an_uninterrupted_one_in_each_mode(mode, at_step, s3_server, bucket, tmp_path):
    from test_distributed import _interrupt, _outcome

    output = f"s3://{bucket}/runs"
    training = {"logging_steps": 1, "per_device_train_batch_size": 16, "num_train_epochs": 1} if mode != "head" else \
        {"logging_steps": 1}  # head: its own epochs and batch (3 x 16 steps), stopped in the second epoch
    cfg = _minilm_config(tmp_path, output, train_rows=256 if mode != "head" else 512, held_out=(64, 64), **training)
    cfg["model"]["train"] = mode
    path = write_yaml(tmp_path / "job.yaml", cfg)
    args = ["run", "--config", str(path)]
    env = base_env(**s3_server.env())
    run_cli_here(*args, env={**env, "FINETUNE_RUN_ID": "straight"}, cwd=tmp_path, check=True)
    code, log = _interrupt(args, {**env, "FINETUNE_RUN_ID": "preempted"}, tmp_path, at_step=at_step, sig=signal.SIGTERM)
    assert code == 10, log[-3000:]
    proc = run_cli_here(*args, env={**env, "FINETUNE_RUN_ID": "preempted"}, cwd=tmp_path, check=True)
    assert "resuming from checkpoint-" in proc.stderr
    client = s3_server.client()
    assert _outcome(client, bucket, "preempted") == _outcome(client, bucket, "straight")


# ---------------------------------------------------------------------------------------------- stories260K


@pytest.mark.slow
@pytest.mark.skipif(not STORIES.is_file(), reason="../shared is not present")
def test_lora_lowers_stories260k_validation_perplexity_and_its_adapter_loads_over_the_gguf_file(tmp_path):
    multi30k = SHARED / "data" / "multi30k-en-de"
    cfg = {  # job/configs/causal-lm-stories260k.yaml without its learning rate: LoRA's default applies
        "task": "causal-lm",
        "model": {"name": str(STORIES), "train": "lora"},
        "lora": {"publish": "adapter"},
        "data": {"train_files": str(multi30k / "train.en.gz"), "validation_files": str(multi30k / "val.en.gz"),
                 "test_files": str(multi30k / "test_2016_flickr.en.gz"), "format": "text", "max_length": 128,
                 "max_train_samples": 2000, "max_eval_samples": 200, "max_predict_samples": 50},
        "output": {"uri": str(tmp_path / "out")},
        "training": {"num_train_epochs": 1, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 32},
    }

    def run(run_id: str, *sets: str) -> dict:
        return _metrics(_run(tmp_path, cfg, run_id, *sets)[1])

    before = run("before", "training.learning_rate=1e-30", "training.max_steps=1")  # the adapters start as no change at all
    after = run("after")
    print(f"stories260K, LoRA on Multi30k: validation perplexity {before['eval_perplexity']:.3f} -> {after['eval_perplexity']:.3f}, "
          f"{after['trainable_parameters']:,} of {after['total_parameters']:,} parameters trained")
    assert after["eval_perplexity"] < before["eval_perplexity"] * 0.9, (before["eval_perplexity"], after["eval_perplexity"])
    assert after["trainable_parameters"] < after["total_parameters"] / 4
    # "after" was scored against the champion "before", whose adapter loaded over the GGUF file.
    assert after["promotion_champion_run"] == "before"
    assert after["promotion_champion"] == pytest.approx(before["test_perplexity"], rel=1e-5)
