"""Tiny models built offline, for the embedded demo and the tests. They are NOT pretrained.

One per model family, each 2 layers with hidden size 64 and a WordPiece tokenizer trained on the run's
own training texts, so every task runs end to end with no Hub and no download:

    builtin:tiny-bert    BERT encoder        text-classification, token-classification, masked-lm
    builtin:tiny-bert-cased  the same, keeping capitals: token-classification's default (NER)
    builtin:tiny-t5      T5 encoder-decoder  seq2seq
    builtin:tiny-gpt     GPT-2 decoder       causal-lm
    builtin:tiny-xlnet   XLNet               permutation-lm

They learn what a small model can from the data at hand; for real accuracy use a pretrained model
(`model.name: bert-base-cased`). The weights are initialised from the run's seed, so the same config
builds the same model.
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import partial
from itertools import islice
from typing import Callable, Iterable

from job.errors import ConfigError, ModelError

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


def _wordpiece_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int, *, lowercase: bool = True,
                         single: str = "[CLS] $A [SEP]", pair: str | None = "[CLS] $A [SEP] $B:1 [SEP]:1", options: dict | None = None):
    """A BERT-style WordPiece tokenizer whose vocabulary is learned from `texts`.

    `single`/`pair` are the templates that add special tokens (BERT's by default; "" adds none) and
    `options` name the special tokens a family expects among ours (T5's eos, GPT's bos/eos) and the
    inputs its model takes (no token_type_ids for T5 and GPT-2, whose GPT-2 would embed them). Cased
    (`lowercase=False`) where the output is text compared with references."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=lowercase), pre_tokenizers.BertPreTokenizer()
    vocab = _wordpiece_vocab(texts, vocab_size, normalizer, pre_tokenizer)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    if single:
        used = [token for token in SPECIAL_TOKENS if token in single + (pair or "")]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(token, vocab[token]) for token in used]
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
        **(options or {}),
    )


def _tiny_bert(texts: Iterable[str], config_kwargs: dict, lowercase: bool = True):
    from transformers import BertConfig

    tokenizer = _wordpiece_tokenizer(texts, vocab_size=4000, model_max_length=512, lowercase=lowercase)
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
    return tokenizer, config


def _tiny_t5(texts: Iterable[str], config_kwargs: dict):
    """An encoder-decoder (T5 layout: relative positions, no biases), cased, [SEP] as end of sequence;
    source and target share the vocabulary."""
    from transformers import T5Config

    tokenizer = _wordpiece_tokenizer(
        texts, vocab_size=6000, model_max_length=512, lowercase=False, single="$A [SEP]", pair="$A [SEP] $B:1 [SEP]:1",
        options={"eos_token": "[SEP]", "model_input_names": ["input_ids", "attention_mask"]},
    )
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_kv=32,
        d_ff=128,
        num_layers=2,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,  # as T5 does
        **config_kwargs,
    )
    return tokenizer, config


def _tiny_gpt(texts: Iterable[str], config_kwargs: dict):
    """A GPT-2 decoder, cased; the tokenizer adds no special tokens (causal-lm ends each text with
    [SEP], its end-of-text token)."""
    from transformers import GPT2Config

    tokenizer = _wordpiece_tokenizer(
        texts, vocab_size=4000, model_max_length=512, lowercase=False, single="", pair=None,
        options={"bos_token": "[CLS]", "eos_token": "[SEP]", "model_input_names": ["input_ids", "attention_mask"]},
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=64,
        n_layer=2,
        n_head=2,
        n_inner=128,
        n_positions=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config_kwargs,
    )
    return tokenizer, config


def _tiny_xlnet(texts: Iterable[str], config_kwargs: dict):
    """An XLNet (two-stream attention, for permutation language modeling); special tokens at the end,
    as XLNet's own tokenizer puts them."""
    from transformers import XLNetConfig

    tokenizer = _wordpiece_tokenizer(
        texts, vocab_size=4000, model_max_length=512, single="$A [SEP] [CLS]", pair="$A [SEP] $B:1 [SEP]:1 [CLS]:1",
    )
    config = XLNetConfig(
        vocab_size=len(tokenizer),
        d_model=64,
        n_layer=2,
        n_head=2,
        d_inner=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        **config_kwargs,
    )
    return tokenizer, config


BUILTINS: dict[str, Callable] = {
    "builtin:tiny-bert": _tiny_bert,  # encoder: text-classification, token-classification, masked-lm
    "builtin:tiny-bert-cased": partial(_tiny_bert, lowercase=False),  # keeps capitals, a name's best clue (NER)
    "builtin:tiny-t5": _tiny_t5,  # encoder-decoder: seq2seq
    "builtin:tiny-gpt": _tiny_gpt,  # decoder: causal-lm
    "builtin:tiny-xlnet": _tiny_xlnet,  # permutation-lm (and the encoder tasks)
}


def build(name: str, texts: Iterable[str], model_class, config_kwargs: dict, seed: int):
    """Build a builtin tokenizer and a freshly initialised model (seeded)."""
    from transformers import set_seed

    if name not in BUILTINS:
        raise ConfigError(f"unknown builtin model (choose: {', '.join(BUILTINS)})", where="model.name")
    tokenizer, config = BUILTINS[name](islice(texts, TOKENIZER_SAMPLE_ROWS), config_kwargs)
    set_seed(seed)
    try:
        if hasattr(model_class, "from_config"):  # an Auto class: it refuses a family it has no model for
            model = model_class.from_config(config)
        elif isinstance(config, model_class.config_class):
            model = model_class(config)
        else:
            raise ValueError
    except ValueError:
        raise ModelError(f"{name} cannot be a {model_class.__name__} (the builtins: {', '.join(BUILTINS)})", where="model.name") from None
    log.info("model: %s built offline (%.2fM parameters, vocabulary %d; not pretrained)", name, model.num_parameters() / 1e6, len(tokenizer))
    return tokenizer, model
