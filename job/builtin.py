"""Tiny models built offline, for the embedded demo and the tests. They are NOT pretrained.

`builtin:tiny-bert` is a 2-layer BERT (hidden size 64) with a WordPiece tokenizer trained on the run's
own training texts, so the job runs end to end with no Hub and no download. It learns what a small
model can from the data at hand; for real accuracy use a pretrained model (`model.name: bert-base-cased`).
The weights are initialised from the run's seed, so the same config builds the same model.
"""

from __future__ import annotations

import logging
from collections import Counter
from itertools import islice
from typing import Callable, Iterable

from job.errors import ConfigError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOKENIZER_SAMPLE_ROWS = 50_000  # enough text for a small vocabulary; bounds the time on huge datasets


def _wordpiece_vocab(texts: Iterable[str], vocab_size: int, normalizer, pre_tokenizer) -> dict[str, int]:
    """A WordPiece vocabulary from word counts: special tokens, every character (alone and as a
    `##` continuation, so any word can be spelled), then the most frequent words.

    Built here rather than with tokenizers' WordPieceTrainer, whose vocabulary (and so the model's
    embedding rows) changed from one process to the next on the same texts: the same config must
    give the same model."""
    words: Counter[str] = Counter()
    for text in texts:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars: Counter[str] = Counter()
    for word, count in words.items():
        for char in word:
            chars[char] += count
    by_count = lambda counter: sorted(counter, key=lambda key: (-counter[key], key))  # noqa: E731
    alphabet = by_count(chars)[: vocab_size // 4]
    tokens = SPECIAL_TOKENS + alphabet + [f"##{c}" for c in alphabet]
    tokens += [w for w in by_count(words) if len(w) > 1][: max(0, vocab_size - len(tokens))]
    return {token: i for i, token in enumerate(tokens)}


def _wordpiece_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int):
    """A lower-casing BERT-style WordPiece tokenizer whose vocabulary is learned from `texts`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    vocab = _wordpiece_vocab(texts, vocab_size, normalizer, pre_tokenizer)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def _tiny_bert(texts: Iterable[str], model_class, config_kwargs: dict):
    from transformers import BertConfig

    tokenizer = _wordpiece_tokenizer(texts, vocab_size=4000, model_max_length=512)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        **config_kwargs,
    )
    return tokenizer, model_class.from_config(config)


BUILTINS: dict[str, Callable] = {
    "builtin:tiny-bert": _tiny_bert,
}


def build(name: str, texts: Iterable[str], model_class, config_kwargs: dict, seed: int):
    """Build a builtin tokenizer and a freshly initialised model (seeded)."""
    from transformers import set_seed

    if name not in BUILTINS:
        raise ConfigError(f"unknown builtin model (choose: {', '.join(BUILTINS)})", where="model.name")
    set_seed(seed)
    tokenizer, model = BUILTINS[name](islice(texts, TOKENIZER_SAMPLE_ROWS), model_class, config_kwargs)
    log.info("model: %s built offline (%.2fM parameters, vocabulary %d; not pretrained)", name, model.num_parameters() / 1e6, len(tokenizer))
    return tokenizer, model
