"""Tiny models for tests that need a real tokenizer: random weights, the real bert-base-uncased vocabulary."""

from __future__ import annotations

from pathlib import Path

from conftest import SHARED

BERT_VOCAB = SHARED / "models" / "bert-uncased-vocab" / "vocab.txt"


def bert_with_real_vocab(folder: Path) -> Path:
    """A saved 2-layer BERT (hidden size 64, seed 0, not pretrained) whose tokenizer is the real 30,522-entry
    WordPiece vocabulary, so words split into sub-words as they do for bert-base-uncased."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer, set_seed

    # transformers 5 takes the file as `vocab=`; `vocab_file=` is silently ignored and every token is [UNK].
    tokenizer = BertTokenizer(vocab=str(BERT_VOCAB), do_lower_case=True)
    assert tokenizer.convert_ids_to_tokens(tokenizer("tokenization")["input_ids"]) == ["[CLS]", "token", "##ization", "[SEP]"]
    set_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
