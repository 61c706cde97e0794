"""How well a run uses the hardware: tokens trained per second and model FLOPs utilisation (MFU).

Every run's metrics.json gets `train_tokens` (the non-padding input tokens the trainer consumed, all
workers together; like `train_runtime`, only this attempt's: a resumed run counts the steps it
trained after the checkpoint), `train_tokens_per_second` (over `train_runtime`) and, on a GPU whose peak is in
PEAK_BF16_TFLOPS, `train_mfu`; `make bench-gpu` (benchmarks/bench_gpu.py) uses the same functions.

    MFU = model FLOPs per token x tokens per second / (the device's dense bf16 peak x GPUs)

Model FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B), as nanoGPT's estimate_mfu does:

    6N + 12 L H Q T

- N: the weights of the model's matrix multiplications: every Linear (and GPT-2's Conv1D), the output
  head included even when it shares its weights with the input embedding; embedding lookups are no
  matmul and do not count. 6 = 2 FLOPs per multiply-add x (the forward pass + the backward pass's two
  products). It assumes every weight trains.
- 12 L H Q T: attention's two products (scores and weighted values) per layer, forward and backward;
  L layers, H heads of dimension Q, T tokens attended to: the mean length of the sequences trained
  (padding excluded; a packed document is its own sequence). Causal masking's saving is not
  subtracted, as in PaLM.

The peak is always the dense bf16 tensor-core figure, whatever precision the run used, so MFU
compares runs on one scale. Encoder-decoder models (two token streams) get no MFU.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

# Dense (no 2:4 sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets, whose headline
# figures are with sparsity (halved here): H100 SXM 1,979 and H100 PCIe 1,513 and H100 NVL 1,671
# (H100 datasheet); H200 SXM 1,979 and H200 NVL 1,671 (H200 product page); A100 624 (A100 datasheet);
# L40S 733 (L40S datasheet); L40 362 (L40 datasheet); L4 242 (L4 datasheet); A10 250 (A10 datasheet);
# B200 4,500 (HGX B200 specifications). The first pattern that matches the device name wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"H100.*PCIe", 756.0),
    (r"H[12]00.*NVL", 835.0),
    (r"H100|H200|H800", 989.0),
    (r"A100|A800", 312.0),
    (r"L40S", 362.0),
    (r"L40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
    (r"B200", 2250.0),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named like torch.cuda.get_device_name() says; None when unknown."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


def matmul_weights(model) -> int:
    """N of the formula: weights of every Linear and Conv1D module (see the module docstring)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))


def flops_per_token(model, mean_sequence_length: float) -> float | None:
    """Model FLOPs per trained token, 6N + 12 L H Q T; None for encoder-decoder models, and for a
    config that does not name its layers, heads and width the usual way."""
    config = getattr(model, "config", None)  # head-only training's head is a bare module
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    config = config.get_text_config()
    layers, heads, hidden = (getattr(config, key, None) for key in ("num_hidden_layers", "num_attention_heads", "hidden_size"))
    if not (layers and heads and hidden):
        return None
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return 6 * matmul_weights(model) + 12 * layers * heads * head_dim * mean_sequence_length


def batch_tokens(inputs: dict):
    """(non-padding tokens, sequences) of one batch, as tensors on the batch's device (no sync):

    - a padded batch counts its attention mask;
    - a packed batch (position ids, no mask: job/tasks/language_model.py) counts a sequence per
      document start (position 0) and a token per target plus one per document start, since every
      token of a document but its first is a target and padding never is;
    - a batch of cached vectors (head-only training, job/training/head_only.py) counts its rows and no token;
    - anything else counts every input id, a row per sequence."""
    import torch

    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return mask.sum(), torch.tensor(mask.shape[0], device=mask.device)
    positions, labels = inputs.get("position_ids"), inputs.get("labels")
    if positions is not None and labels is not None and mask is None:
        starts = (positions == 0).sum()
        return (labels != -100).sum() + starts, starts
    if "input_ids" not in inputs:
        rows = inputs["features"]
        return torch.tensor(0, device=rows.device), torch.tensor(rows.shape[0], device=rows.device)
    ids = inputs["input_ids"]
    return torch.tensor(ids.numel(), device=ids.device), torch.tensor(ids.shape[0], device=ids.device)


def counting(trainer_class):
    """`trainer_class` that also counts the tokens of every training batch, on the device, summed
    across workers once when training ends: `trainer.counted()` -> (tokens, sequences)."""

    class Counting(trainer_class):
        _token_count = None

        def _track_num_input_tokens(self, inputs):
            # Trainer's own count (training.include_num_input_tokens_seen) syncs with the GPU every
            # step; this one adds on the device and is read once.
            super()._track_num_input_tokens(inputs)
            import torch

            counts = torch.stack(batch_tokens(inputs)).to(self.args.device)
            self._token_count = counts if self._token_count is None else self._token_count + counts

        def counted(self, gather: bool = True) -> tuple[int, int]:
            """Tokens and sequences trained so far; with `gather`, every worker must call it together."""
            import torch

            counts = self._token_count if self._token_count is not None else torch.zeros(2, dtype=torch.long, device=self.args.device)
            if gather:
                counts = self.accelerator.gather(counts.unsqueeze(0)).sum(0)
            tokens, sequences = counts.tolist()
            return int(tokens), int(sequences)

    return Counting


def train_metrics(model, tokens: int, sequences: int, seconds: float, world_size: int) -> dict:
    """train_tokens, train_tokens_per_second and train_mfu (None off a GPU, or on one whose peak is
    not in the table)."""
    import torch

    per_second = tokens / seconds if seconds > 0 else 0.0
    metrics = {"train_tokens": tokens, "train_tokens_per_second": round(per_second, 1), "train_mfu": None}
    if torch.cuda.is_available() and tokens and sequences:
        name = torch.cuda.get_device_name()
        peak = peak_bf16_tflops(name)
        flops = flops_per_token(model, tokens / sequences)
        if peak is None:
            log.info("train: no bf16 peak known for %s, so no MFU (job/training/throughput.py PEAK_BF16_TFLOPS)", name)
        elif flops is not None:
            metrics["train_mfu"] = round(flops * per_second / (peak * 1e12 * world_size), 4)
    return metrics
