"""token-classification: the CoNLL reader, sub-word alignment, and NER on WNUT-17 from ../shared."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import ROOT, SHARED, base_env, read_jsonl, run_cli, run_cli_here, write_jsonl, write_yaml
from support.tiny_models import BERT_VOCAB, bert_with_real_vocab

WNUT = SHARED / "data" / "wnut17"
TINY_CONFIG = ROOT / "job" / "configs" / "token-classification-tiny.yaml"
# HF wnut_17's ClassLabel order (datasets/wnut_17/wnut_17.py, copied in ../shared PROVENANCE.md).
WNUT_LABELS = ["O", "B-corporation", "I-corporation", "B-creative-work", "I-creative-work", "B-group", "I-group",
               "B-location", "I-location", "B-person", "I-person", "B-product", "I-product"]


def _load(tmp_path: Path, **data):
    from job.cli import config_loader
    from job.data import sources

    path = write_yaml(tmp_path / "c.yaml", {"task": "token-classification", "data": data})
    return sources.load_splits(config_loader.load(str(path), use_env=False))


def test_conll_reader_handles_tab_separators_docstart_and_columns(tmp_path):
    # a lone TAB ends a sentence (WNUT-17), -DOCSTART- is skipped, CoNLL-2003's 4 columns give token and last tag
    (tmp_path / "train.conll").write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\t\nPeter NNP B-NP B-PER\n\n\nBlackburn NNP B-NP B-PER\n"
    )
    splits = _load(tmp_path, train_files=str(tmp_path / "train.conll"), validation_files=str(tmp_path / "train.conll"),
                   test_files=str(tmp_path / "train.conll"))
    assert splits["train"]["tokens"] == [["EU", "rejects"], ["Peter"], ["Blackburn"]]
    assert splits["train"]["tags"] == [["B-ORG", "O"], ["B-PER"], ["B-PER"]]


def test_a_conll_file_without_tags_is_input_and_a_mixed_one_names_its_line(tmp_path):
    (tmp_path / "tagged.conll").write_text("a\tO\nb\tB-x\n\nc\tO\n")
    (tmp_path / "words.conll").write_text("a\nb\n\nc\n")
    splits = _load(tmp_path, train_files=str(tmp_path / "tagged.conll"), validation_files=str(tmp_path / "tagged.conll"),
                   test_files=str(tmp_path / "words.conll"))
    assert splits["test"].column_names == ["tokens", "__row_id"] and splits["test"]["tokens"] == [["a", "b"], ["c"]]

    (tmp_path / "mixed.conll").write_text("a\tO\nb\n")
    path = write_yaml(tmp_path / "bad.yaml", {"task": "token-classification", "data": {"train_files": str(tmp_path / "mixed.conll")}})
    proc = run_cli_here("check", "--config", str(path), cwd=tmp_path)
    assert proc.returncode == 4
    assert f"data error: {tmp_path / 'mixed.conll'}:2: expected token<TAB>tag, as on the file's first line; got 'b'" in proc.stderr


@pytest.mark.skipif(not WNUT.is_dir(), reason="../shared is not present")
def test_wnut17_reads_as_hf_wnut_17(monkeypatch):
    from job import tasks
    from job.cli import config_loader
    from job.data import sources

    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository root
    cfg = config_loader.load(str(TINY_CONFIG), use_env=False)
    splits = sources.load_splits(cfg)
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 3394, "validation": 1009, "test": 1287}
    assert sum(map(len, splits["train"]["tokens"])) == 62730
    assert sum(tag.startswith("B-") for tags in splits["test"]["tags"] for tag in tags) == 1079
    assert splits["train"][0]["tokens"][:3] == ["@paulwalk", "It", "'s"]
    spec = tasks.get("token-classification").inspect(splits, cfg)
    assert spec.label_names == WNUT_LABELS


def test_sub_word_alignment_first_or_all():
    from job.tasks.token_classification import _align, _inside_ids

    names = ["O", "B-loc", "I-loc", "B-per"]
    word_ids = [-1, 0, 0, 0, 1, 2, 2, -1]  # [CLS] New##Yo##rk is Ann##a [SEP]
    tags = [1, 0, 3]
    assert _align(word_ids, tags, None) == [-100, 1, -100, -100, 0, 3, -100, -100]
    # every sub-word: B-loc continues as I-loc; B-per has no I- tag and stays B-per
    assert _align(word_ids, tags, _inside_ids(names)) == [-100, 1, 2, 2, 0, 3, 3, -100]


@pytest.mark.skipif(not BERT_VOCAB.is_file(), reason="../shared is not present")
def test_json_rows_label_all_sub_words_and_predict(tmp_path):
    """JSON rows through a real WordPiece vocabulary (the surname splits into sub-words), trained on every
    sub-word; scored per word, and `finetune-job predict` gives the run's predictions back."""
    import random

    from seqeval.metrics import f1_score
    from transformers import AutoTokenizer

    rng = random.Random(0)
    places, people, filler = ["paris", "berlin", "madrid"], ["anna", "pedro", "olga"], ["went", "to", "see", "the", "a", "then"]
    rows = []
    for _ in range(240):
        words, tags = [], []
        for _ in range(rng.randint(4, 9)):
            kind = rng.random()
            if kind < 0.2:
                words += [rng.choice(people).capitalize(), "Smithsonwright"]
                tags += ["B-per", "I-per"]
            elif kind < 0.35:
                words.append(rng.choice(places).capitalize())
                tags.append("B-loc")
            else:
                words.append(rng.choice(filler))
                tags.append("O")
        rows.append({"words": words, "ner": tags})
    write_jsonl(tmp_path / "train.jsonl", rows)
    model = bert_with_real_vocab(tmp_path / "bert")
    assert len(AutoTokenizer.from_pretrained(model).tokenize("Smithsonwright")) > 1
    cfg = {
        "task": {"name": "token-classification", "label_subwords": "all"},
        "model": {"name": str(model)},
        "data": {"train_files": str(tmp_path / "train.jsonl"), "text_column": "words", "label_column": "ner", "max_length": 24},
        "output": {"uri": str(tmp_path / "out")},
        "training": {"num_train_epochs": 6, "learning_rate": 0.005, "per_device_train_batch_size": 16, "logging_steps": 20},
    }
    path = write_yaml(tmp_path / "ner.yaml", cfg)
    run_cli_here("run", "--config", str(path), env=base_env(FINETUNE_RUN_ID="json"), cwd=tmp_path, check=True)
    run_dir = tmp_path / "out" / "json"
    model_cfg = json.loads((run_dir / "model" / "config.json").read_text())
    assert list(model_cfg["id2label"].values()) == ["O", "B-loc", "B-per", "I-per"]  # O first, then sorted
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_f1"] > 0.8, metrics
    assert {"test_f1_per", "test_precision_loc", "test_recall_loc"} <= set(metrics)
    assert metrics["test_classification_report"]["per"]["support"] > 0
    predictions = read_jsonl(run_dir / "predictions.jsonl")
    assert predictions and all(len(p["predicted"]) == len(p["tokens"]) == len(p["tags"]) for p in predictions)
    assert set(predictions[0]) == {"id", "tokens", "tags", "predicted"}
    # The rows' tags give the metric's F1 again (every sentence fits in max_length).
    assert f1_score([p["tags"] for p in predictions], [p["predicted"] for p in predictions]) == pytest.approx(metrics["test_f1"])

    out = tmp_path / "scored.jsonl"
    write_jsonl(tmp_path / "unlabelled.jsonl", [{"words": p["tokens"]} for p in predictions])
    run_cli_here("predict", "--model", str(run_dir / "model"), "--input", str(tmp_path / "unlabelled.jsonl"), "--output", str(out), check=True)
    scored = read_jsonl(out)
    assert [s["predicted"] for s in scored] == [p["predicted"] for p in predictions]
    assert all(s["tags"] is None for s in scored)


@pytest.mark.slow
@pytest.mark.skipif(not WNUT.is_dir(), reason="../shared is not present")
def test_wnut17_ner_with_the_tiny_config(tmp_path):
    """The tiny config end to end on WNUT-17: HF's label order, entity-level scores per type, one prediction
    per test sentence with its words. A 2-layer model trained from scratch finds few of WNUT's rare,
    emerging entities (test F1 about 0.04), but it finds some."""
    from seqeval.metrics import f1_score

    sets = ["--set", f"output.uri={tmp_path}"]
    run_cli("run", "--config", str(TINY_CONFIG), *sets, env=base_env(FINETUNE_RUN_ID="wnut"), cwd=ROOT, check=True)
    run_dir = tmp_path / "wnut"
    model_cfg = json.loads((run_dir / "model" / "config.json").read_text())
    assert [model_cfg["id2label"][str(i)] for i in range(13)] == WNUT_LABELS
    metrics = json.loads((run_dir / "metrics.json").read_text())
    types = {"corporation", "creative-work", "group", "location", "person", "product"}
    assert {"test_f1", "test_precision", "test_recall", "test_accuracy"} <= set(metrics)
    assert {f"{score}_{t}" for score in ("test_f1", "test_precision", "test_recall") for t in types} <= set(metrics)
    report = metrics["test_classification_report"]
    assert {t: report[t]["support"] for t in types} == {  # B- tags of emerging.test.annotated, per type
        "corporation": 66, "creative-work": 142, "group": 165, "location": 150, "person": 429, "product": 127}
    assert metrics["test_loss"] < math.log(13) / 2  # it learned at least how rare entities are
    predictions = read_jsonl(run_dir / "predictions.jsonl")
    assert [p["id"] for p in predictions] == list(range(1287))
    first = (WNUT / "emerging.test.annotated").read_text().split("\n\n")[0].splitlines()
    assert [(w, t) for w, t in zip(predictions[0]["tokens"], predictions[0]["tags"])] == [tuple(line.split("\t")) for line in first]
    assert all(len(p["predicted"]) == len(p["tokens"]) for p in predictions)
    assert metrics["test_f1"] > 0.01 and metrics["test_precision"] > 0.05
    # The rows' tags give the metric's F1 again (no sentence is longer than 512 sub-words).
    assert f1_score([p["tags"] for p in predictions], [p["predicted"] for p in predictions]) == pytest.approx(metrics["test_f1"])
    print(f"WNUT-17 test entity F1 {metrics['test_f1']:.4f} (P {metrics['test_precision']:.4f}, R {metrics['test_recall']:.4f})")
