"""GGUF checkpoints (llama.cpp's one-file format), loaded through transformers.

    model:
      name: ../shared/models/stories260K-gguf/stories260K.gguf   # a path ending in .gguf

transformers turns the file into a model and a tokenizer (it needs the `gguf` package). By default
transformers 5.24 keeps a GGUF model "quantized", which Trainer refuses to fine-tune even when the
weights are float; asked to dequantize, it gives an ordinary float model, which the run publishes as
safetensors. And llama.cpp writes 0xFFFFFFFF ("no token") as the id of a special token a model lacks,
which transformers 5.24 takes for a token id: the tokenizer fails with an IndexError and the model on
a padding index out of range. So ids past the vocabulary are dropped: the model is told it has no such
token, and the tokenizer is read from a copy of the file's metadata (no tensors) without them.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".gguf"
_TOKEN_IDS = "tokenizer.ggml."
# Config attributes of the special tokens a GGUF file names (a model config has no unk or sep id).
_CONFIG_IDS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "pad_token_id": "padding_token_id"}


def is_gguf(name: str) -> bool:
    return name.lower().endswith(SUFFIX)


def load(path: str, cls, kwargs: dict, options: dict, work_dir: Path):
    """(tokenizer, model) from a GGUF file; Hub files (`owner/repo/file.gguf`) are fetched by transformers."""
    from transformers import AutoTokenizer, GgufConfig

    folder, _, name = path.rpartition("/")
    missing = _missing_token_ids(path) if Path(path).is_file() else []
    tokenizer_folder, tokenizer_name = folder or ".", name
    if missing:
        log.info("model: %s names no %s; read without them", name, ", ".join(k.removeprefix(_TOKEN_IDS) for k in missing))
        tokenizer_path = _metadata_copy(path, work_dir / "gguf-tokenizer", drop=missing)
        tokenizer_folder, tokenizer_name = str(tokenizer_path.parent), tokenizer_path.name
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, gguf_file=tokenizer_name, **options)
    absent = {attribute: None for attribute, key in _CONFIG_IDS.items() if _TOKEN_IDS + key in missing}
    dense = GgufConfig(dequantize=True)  # weights unpacked: trainable, and saved as safetensors
    model = cls.from_pretrained(folder or ".", gguf_file=name, quantization_config=dense, **options, **{**absent, **kwargs})
    return tokenizer, model


def _missing_token_ids(path: str) -> list[str]:
    """The metadata keys holding special-token ids that are not in the vocabulary."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    vocabulary = fields.get(_TOKEN_IDS + "tokens")
    if vocabulary is None:
        return []
    size = len(vocabulary.data)
    return [key for key, field in fields.items() if key.startswith(_TOKEN_IDS) and key.endswith("_token_id") and field.contents() >= size]


def _metadata_copy(path: str, folder: Path, drop: list[str]) -> Path:
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(path).name
    writer = GGUFWriter(str(target), arch=reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop:
            continue  # the header's own fields and the architecture are written by GGUFWriter
        kind = field.types[0]
        writer.add_key_value(key, field.contents(), kind, sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
