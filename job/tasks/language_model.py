"""What the three language-modeling tasks share (causal-lm, masked-lm, permutation-lm); not a task itself.

The data is plain text in `data.text_column`. Training and validation text is tokenized, concatenated
(each text ending with the tokenizer's end-of-text token where it has one, so documents stay apart)
and cut into blocks of `data.max_length` tokens (the tokenizer's limit, at most 512, when unset): no
padding is wasted and long documents are learned whole, as transformers' run_clm/run_mlm do. The
last, shorter block of each tokenization batch is kept and padded in its batch. Attention then runs
across the documents inside a block.

Packed instead (causal-lm's `task.packing`): whole documents are laid into blocks of at most
`data.max_length` tokens, each keeping its own positions from 0 (a longer one is cut into block-sized
pieces), and the collator passes position ids and no attention mask, from which transformers' masks
keep each document to itself (masking_utils finds the packed sequences; FlashAttention's varlen path
takes their boundaries). A batch is then either rows padded at the end (sdpa, eager: right padding
needs no mask in a causal model) or, for FlashAttention, one row with no padding at all. Whether a
model keeps packed documents apart is checked, not assumed: `keeps_documents_apart`.

The test split is scored one row at a time instead (each truncated to one block), so that every
prediction row is one input row: its id, its text, how many tokens were predicted and their mean loss
and perplexity.

Metrics: Trainer's `loss` and `perplexity`, exp of the mean negative log-likelihood over every
predicted token (for masked-lm and permutation-lm only the masked tokens are predicted, so it is
their pseudo-perplexity), and `predicted_tokens`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Any, Iterator

from job.data.rows import ROW_ID, BadRow, column_error, is_iterable, max_tokens, rows_named

NO_TARGET = -1.0  # a position's loss when nothing is predicted there (a loss is never negative)


@dataclass
class Spec:
    text_column: str
    # Training and validation blocks: None, documents concatenated; "rows" or "flat", packed documents
    # in padded rows or one row per batch (decided with the model loaded: causal_lm.fit_to_model).
    packing: str | None = None


def inspect(splits, cfg) -> Spec:
    column = cfg.data.text_column
    for split, ds in splits.items():
        if ds.column_names and column not in ds.column_names:
            raise column_error(column, ds, split, "data.text_column")
    return Spec(column)


def spec_from_model(model_config, cfg, rows) -> Spec:
    return inspect({"input": rows}, cfg)


def texts(split, cfg) -> Iterator[str]:
    for row in split:
        if row.get(cfg.data.text_column):
            yield row[cfg.data.text_column]


def model_kwargs(spec: Spec) -> dict[str, Any]:
    return {}


def block_size(tokenizer, cfg) -> int:
    return max_tokens(tokenizer, cfg.data)


def preprocess(splits, tokenizer, cfg, spec: Spec, *, end_with_eos: bool, tokenizer_kwargs: dict | None = None):
    """Train and validation as blocks; test a row at a time (see the module docstring)."""
    size = block_size(tokenizer, cfg)
    eos = tokenizer.eos_token_id if end_with_eos else None  # (causal-lm asks for no extra columns to extend)
    options = tokenizer_kwargs or {}

    def ended(ids: list[int], room: bool) -> list[int]:
        return ids if ids[-1:] == [eos] or not room else ids + [eos]

    def encode(batch, split: str):
        texts = batch[spec.text_column]
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise BadRow(batch[ROW_ID][i], "has no text", "data.text_column")
        if split == "test":
            encoded = tokenizer(texts, truncation=True, max_length=size, **options)
            if eos is not None:  # where there is room: a row of a whole block was cut short
                encoded["input_ids"] = [ended(ids, room=len(ids) < size) for ids in encoded["input_ids"]]
            encoded = {key: encoded[key] for key in ("input_ids", *_extra_columns(options))}
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            return encoded
        encoded = tokenizer(texts, **options)
        if eos is not None:
            encoded["input_ids"] = [ended(ids, room=True) for ids in encoded["input_ids"]]
        if spec.packing:
            return pack(encoded["input_ids"], size)
        columns = {key: list(chain.from_iterable(encoded[key])) for key in ("input_ids", *_extra_columns(options))}
        total = len(columns["input_ids"])
        blocks = {key: [values[i : i + size] for i in range(0, total, size)] for key, values in columns.items()}
        blocks["length"] = [len(ids) for ids in blocks["input_ids"]]
        return blocks

    out = {}
    for split, ds in splits.items():
        keep = {ROW_ID} if split == "test" else set()  # a block is no one row: only test rows keep their ids
        remove = [c for c in (ds.column_names or []) if c not in keep]
        kwargs = {} if is_iterable(ds) else {"num_proc": cfg.data.num_proc, "desc": f"tokenize {split}"}
        out[split] = ds.map(rows_named(encode, ds, split, cfg.data), batched=True, remove_columns=remove, fn_kwargs={"split": split}, **kwargs)
    return out


def pack(documents: list[list[int]], size: int) -> dict[str, list]:
    """Whole documents in blocks of at most `size` tokens, in their order, each document's positions
    counted from 0; a document longer than a block is cut into block-sized pieces, each its own."""
    blocks: list[list[int]] = [[]]
    positions: list[list[int]] = [[]]
    for document in documents:
        for start in range(0, len(document), size):
            piece = document[start : start + size]
            if len(blocks[-1]) + len(piece) > size:
                blocks.append([])
                positions.append([])
            blocks[-1] += piece
            positions[-1] += range(len(piece))
    kept = [i for i, block in enumerate(blocks) if block]
    return {
        "input_ids": [blocks[i] for i in kept],
        "position_ids": [positions[i] for i in kept],
        "length": [len(blocks[i]) for i in kept],
    }


def packed_collator(padded, *, flat: bool, pad_to_multiple_of: int | None):
    """Batches of packed blocks (see the module docstring); test rows, which are not packed, go to
    `padded`, the task's own collator. Every token of a document but its first is a target."""
    from transformers import DataCollatorWithFlattening

    # One row, and the documents' boundaries as FlashAttention's varlen arguments: without them
    # transformers infers them from the position ids in every layer, a GPU sync each time.
    flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=True)

    def collate(features: list[dict]) -> dict:
        if "position_ids" not in features[0]:
            return padded(features)
        if flat:
            return flatten([{"input_ids": document} for f in features for document in _documents(f)])
        return _padded_rows(features, pad_to_multiple_of)

    return collate


def _documents(block: dict) -> list[list[int]]:
    ids, positions = block["input_ids"], block["position_ids"]
    starts = [i for i, position in enumerate(positions) if position == 0] + [len(ids)]
    return [list(ids[a:b]) for a, b in zip(starts, starts[1:])]


def _padded_rows(features: list[dict], pad_to_multiple_of: int | None) -> dict:
    """Blocks padded at the end to one width, with no attention mask: in a causal model no token
    attends to a later one, so the padding only extends the last document's positions and is never
    a target. It repeats the row's last token, whose value nothing reads; the pad token would make
    transformers warn that the attention mask is missing."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids, positions, labels = [], [], []
    for f in features:
        row, position = list(f["input_ids"]), list(f["position_ids"])
        extra = width - len(row)
        ids.append(row + row[-1:] * extra)
        positions.append(position + list(range(position[-1] + 1, position[-1] + 1 + extra)))
        labels.append([token if p else -100 for token, p in zip(row, position)] + [-100] * extra)
    return {"input_ids": torch.tensor(ids), "position_ids": torch.tensor(positions), "labels": torch.tensor(labels)}


def keeps_documents_apart(model) -> bool:
    """Whether this model, with its attention implementation, keeps packed documents apart: the
    logits of the second of two documents packed in one row (position ids, no mask) must not move
    when the first one's tokens change. Two forward passes of 9 tokens, on the model's device.
    transformers 5.24's OPT and Bloom, and every bidirectional encoder (BERT), fail it."""
    import torch

    vocabulary = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randint(vocabulary, (1, 5), generator=generator), torch.randint(vocabulary, (1, 4), generator=generator)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]])
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = [
                model(input_ids=torch.cat([a, second], 1).to(device), position_ids=positions.to(device), use_cache=False).logits[0, 5:].float()
                for a in (first, (first + 1) % vocabulary)
            ]
    except (TypeError, ValueError, RuntimeError):  # a model that takes no position ids, or not this way
        return False
    finally:
        model.train(training)
    return bool((logits[0] - logits[1]).abs().max() <= 1e-4 * max(1.0, float(logits[0].abs().max())))


def _extra_columns(tokenizer_kwargs: dict) -> tuple[str, ...]:
    wanted = {"return_special_tokens_mask": "special_tokens_mask", "return_offsets_mapping": "offset_mapping"}
    return tuple(column for option, column in wanted.items() if tokenizer_kwargs.get(option))


# ---------------------------------------------------------------------------------------------- metrics


def token_losses(logits, labels, *, shift: bool):
    """Each position's negative log-likelihood of its target, NO_TARGET where there is none; computed
    per batch so that only (rows x positions) floats are gathered, not the vocabulary-sized logits.
    `shift`: a causal model's logits at position t predict the token at t + 1."""
    import torch

    if isinstance(logits, tuple):  # models that also return mems or caches
        logits = logits[0]
    losses = torch.full(labels.shape, NO_TARGET, dtype=torch.float32, device=labels.device)
    if shift:
        logits, targets, into = logits[:, :-1], labels[:, 1:], losses[:, 1:]
    else:
        targets, into = labels, losses
    nll = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="none"
    ).view(targets.shape)
    into.copy_(torch.where(targets != -100, nll, torch.full_like(nll, NO_TARGET)))
    return losses


def compute_metrics(eval_prediction, spec: Spec) -> dict[str, float]:
    losses = eval_prediction.predictions
    predicted = losses >= 0  # gathering pads rows with -100; NO_TARGET marks positions without a target
    count = int(predicted.sum())
    if count == 0:
        return {"predicted_tokens": 0}
    return {"perplexity": math.exp(float(losses[predicted].sum()) / count), "predicted_tokens": count}


def report(predict_output, spec: Spec) -> dict[str, Any]:
    return {}


def prediction_rows(raw_test, predict_output, spec: Spec) -> Iterator[dict[str, Any]]:
    losses = predict_output.predictions
    for i, row in enumerate(raw_test):
        predicted = losses[i][losses[i] >= 0]
        mean = float(predicted.mean()) if len(predicted) else None
        yield {
            "id": row[ROW_ID],
            "text": row[spec.text_column],
            "predicted_tokens": int(len(predicted)),
            "loss": round(mean, 6) if mean is not None else None,
            "perplexity": round(math.exp(mean), 4) if mean is not None else None,
        }
