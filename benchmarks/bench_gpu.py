"""`make bench-gpu`: training throughput and MFU of the job's defaults against plain Trainer defaults,
and each GPU default turned off (or on) by itself, as one table.

    python benchmarks/bench_gpu.py                        # on a GPU: BERT-base classification, a 125M Llama causal-lm
    python benchmarks/bench_gpu.py --tiny --steps 5       # on CPU (tiny models, no MFU): what CI runs, smaller
    python benchmarks/bench_gpu.py --variants "plain Trainer,job defaults" --batch-size 256

Workloads, both with random weights built from a config (no download) and the real bert-base-uncased
WordPiece vocabulary from ../shared:
- BERT-base (110M) sequence classification at sequence length 128: rt-polarity's sentences, joined
  in order into texts of one polarity of about 128 tokens (so rows are 128 tokens long, as in the
  usual BERT fine-tuning benchmark), labelled by that polarity;
- a decoder of 125M parameters in Llama's shape (12 layers, 768 wide, 12 heads, MLP 1792, untied
  30,522-token embeddings), causal-lm on Multi30k's English captions (one document each, 14 tokens
  on average), blocks of 128.
The texts are repeated to fill the run.

Rows: `plain Trainer` is what a script without the job does: TrainingArguments' defaults (fp32, no
TF32, the fused AdamW transformers 5 picks, sdpa attention) and every row padded to 128 tokens (for
causal-lm: a caption per row). `job defaults` runs the job's own recipe (job/recipes/run.py's steps): bf16 and
TF32 where the GPU has them, pinned memory, dynamic padding with length-grouped batches, causal-lm
documents packed. Every other row is the job's defaults with one setting changed.

Columns: tokens/s counts non-padding input tokens (job/training/throughput.py counts them from each batch);
samples/s counts sequences (rows; packed documents count one each); peak memory is
torch.cuda.max_memory_allocated (peak RSS of the variant's process on CPU); MFU is model FLOPs per
token (PaLM's 6N + 12LHQT, T the mean sequence length measured) x tokens/s / the device's dense bf16
peak (job/training/throughput.py: formula, peak table and sources). Ratios are against the `plain Trainer` row
(x plain) and the `job defaults` row (x job) of the same workload in this same invocation. Each
variant runs in its own process (TF32 and compile caches are process-wide), timed over --steps
optimizer steps after --warmup steps, with the GPU synchronised at both ends.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAIN, JOB = "plain Trainer", "job defaults"
# name -> (what it changes in the job's config, where it applies)
VARIANTS: dict[str, tuple[dict, set[str]]] = {
    PLAIN: ({}, {"cpu", "gpu"}),
    JOB: ({}, {"cpu", "gpu"}),
    "packing off (blocks across documents)": ({"task": {"packing": False}}, {"cpu", "gpu", "lm"}),
    "bf16 off (fp32, TF32 on)": ({"training": {"bf16": False}}, {"gpu"}),
    "TF32 off": ({"training": {"tf32": False}}, {"gpu"}),
    "AdamW unfused (adamw_torch)": ({"training": {"optim": "adamw_torch"}}, {"cpu", "gpu"}),
    "eager attention": ({"model": {"attn_implementation": "eager"}}, {"cpu", "gpu"}),
    "flash_attention_2": ({"model": {"attn_implementation": "flash_attention_2"}}, {"gpu", "flash_attn"}),
    "4 dataloader workers": ({"training": {"dataloader_num_workers": 4, "dataloader_persistent_workers": True}}, {"cpu", "gpu"}),
    "pinned memory off": ({"training": {"dataloader_pin_memory": False}}, {"gpu"}),
    "torch.compile on": ({"training": {"torch_compile": True}}, {"gpu"}),
}
WORKLOADS = ("bert-base classification", "llama-125m causal-lm")


# ---------------------------------------------------------------------------------------------- data


def _rt_polarity(shared: Path) -> list[tuple[str, int]]:
    folder = shared / "data" / "rt-polaritydata"
    sentences = []
    for name, label in (("rt-polarity.neg", 0), ("rt-polarity.pos", 1)):
        text = (folder / name).read_bytes().decode("latin-1")  # the files' encoding (PROVENANCE.md)
        sentences += [(line.strip(), label) for line in text.split("\n") if line.strip()]
    return sentences


def _captions(shared: Path) -> list[str]:
    import gzip

    with gzip.open(shared / "data" / "multi30k-en-de" / "train.en.gz", "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _reviews(sentences: list[tuple[str, int]], tokenizer, length: int) -> list[dict]:
    """Consecutive sentences of one polarity joined until the text fills `length` tokens."""
    rows, parts, tokens, label = [], [], 0, None
    counts = tokenizer([s for s, _ in sentences], add_special_tokens=False)["input_ids"]
    for (sentence, polarity), ids in zip(sentences, counts):
        if polarity != label or tokens >= length - 2:
            if parts and tokens >= length // 2:
                rows.append({"text": " ".join(parts), "label": label})
            parts, tokens, label = [], 0, polarity
        parts.append(sentence)
        tokens += len(ids)
    return rows


def _write(folder: Path, rows: list[dict], needed: int) -> dict:
    """train/validation/test JSON lines: the rows repeated to at least `needed` training rows."""
    repeated = rows * max(1, -(-needed // len(rows)))
    files = {}
    for split, part in (("train", repeated), ("validation", rows[:64]), ("test", rows[:64])):
        path = folder / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
        files[f"{split}_files"] = str(path)
    return files


def prepare(folder: Path, shared: Path, tiny: bool, batch_size: int, steps: int, texts: int | None) -> dict:
    """Models (random weights, seeded) and data for both workloads, saved once for every variant."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = BertTokenizer(vocab=str(shared / "models" / "bert-uncased-vocab" / "vocab.txt"), do_lower_case=True)
    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if tiny else {}
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), num_labels=2, **size))  # BertConfig(): BERT-base
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
        **(size if tiny else dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1792)),
    ))
    needed = batch_size * steps
    out = {}
    for name, model, rows in (
        (WORKLOADS[0], bert, _reviews(_rt_polarity(shared), tokenizer, 128)),
        (WORKLOADS[1], llama, [{"text": caption} for caption in _captions(shared)]),
    ):
        where = folder / name.replace(" ", "-")
        model.save_pretrained(where / "model")
        tokenizer.save_pretrained(where / "model")
        rows = rows[:texts] if texts else rows
        data = where / "data"
        data.mkdir()
        # causal-lm packs about 9 captions a row: enough text for that many rows too
        out[name] = {"model": str(where / "model"), "files": _write(data, rows, needed * (10 if "causal" in name else 1)),
                     "parameters": model.num_parameters(), "rows": len(rows)}
    return out


# ---------------------------------------------------------------------------------------------- one variant


def _timer(trainer, warmup: int):
    """Tokens, sequences and seconds between the end of step `warmup` and the end of training."""
    import torch
    from transformers import TrainerCallback

    def now():
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return (time.perf_counter(), *trainer.counted(gather=False))

    class Window(TrainerCallback):
        start = end = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                self.start = now()

        def on_train_end(self, args, state, control, **kwargs):
            self.end = now()

    return Window()


def _job_trainer(workload: str, prepared: dict, changes: dict, args, folder: Path):
    """The job's recipe (job/recipes/run.py, steps 1-4) on this workload, with `changes` over its config."""
    import yaml

    raw = {
        "task": {"name": "text-classification" if "classification" in workload else "causal-lm"},
        "model": {"name": prepared["model"]},
        "data": {**prepared["files"], "max_length": 128},
        "output": {"uri": str(folder / "out")},
        "training": {"per_device_train_batch_size": args.batch_size, "max_steps": args.warmup + args.steps,
                     "eval_strategy": "no", "logging_steps": 10**6, "seed": 0, "learning_rate": 1e-4},
    }
    if "classification" in workload:
        raw["data"]["label_names"] = ["neg", "pos"]
    for section, values in changes.items():
        raw.setdefault(section, {}).update(values)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    from job.cli import config_loader

    cfg = config_loader.load(str(path), use_env=False)
    return job_recipe(cfg, folder)[0]


def job_recipe(cfg, folder: Path):
    """job/recipes/run.py's steps 1-4 in this process, up to a Trainer ready to train: (trainer, features, spec).
    The benchmarks and tests/training/test_throughput.py measure what it builds."""
    from job import models, tasks, training
    from job.data import sources

    task = tasks.get(cfg.task.name)
    splits = sources.load_splits(cfg)
    spec = task.inspect(splits, cfg)
    tokenizer, model = models.load(cfg, task, spec, splits["train"], folder)
    if hasattr(task, "fit_to_model"):
        spec = task.fit_to_model(spec, model, cfg)
    features, collator = training.prepare(cfg, task, spec, tokenizer, splits)
    trainer_args = training.arguments(cfg, folder / "trainer", progress_bars=False)
    return training.trainer(cfg, trainer_args, model, tokenizer, features, collator, compute_metrics=None), features, spec


def _plain_trainer(workload: str, prepared: dict, args, folder: Path):
    """What a script without the job does: every row padded to 128, TrainingArguments' defaults."""
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              DataCollatorForLanguageModeling, Trainer, TrainingArguments, default_data_collator)

    from job.training import throughput

    tokenizer = AutoTokenizer.from_pretrained(prepared["model"])
    needed = args.batch_size * (args.warmup + args.steps)  # no more than it trains on: padding them all costs time
    rows = [json.loads(line) for line in Path(prepared["files"]["train_files"]).read_text().splitlines()[:needed]]
    encoded = tokenizer([r["text"] for r in rows], padding="max_length", truncation=True, max_length=128)
    if "classification" in workload:
        dataset = Dataset.from_dict({**encoded, "labels": [r["label"] for r in rows]})
        model, collator = AutoModelForSequenceClassification.from_pretrained(prepared["model"]), default_data_collator
    else:
        dataset = Dataset.from_dict(dict(encoded))
        model, collator = AutoModelForCausalLM.from_pretrained(prepared["model"]), DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer_args = TrainingArguments(
        output_dir=str(folder / "plain"), per_device_train_batch_size=args.batch_size, max_steps=args.warmup + args.steps,
        learning_rate=1e-4, seed=0, report_to="none", save_strategy="no", logging_steps=10**6, use_cpu=not torch.cuda.is_available(),
    )
    return throughput.counting(Trainer)(model=model, args=trainer_args, train_dataset=dataset, data_collator=collator)


def run_variant(workload: str, variant: str, prepared: dict, args) -> dict:
    """Train one variant for warmup + steps and measure the window after the warm-up."""
    import torch
    from transformers import set_seed

    from job.training import throughput

    set_seed(0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        folder = Path(tmp)
        if variant == PLAIN:
            trainer = _plain_trainer(workload, prepared, args, folder)
        else:
            trainer = _job_trainer(workload, prepared, VARIANTS[variant][0], args, folder)
        window = _timer(trainer, args.warmup)
        trainer.add_callback(window)
        trainer.train()
    (start, tokens0, sequences0), (end, tokens1, sequences1) = window.start, window.end
    seconds, tokens, sequences = end - start, tokens1 - tokens0, sequences1 - sequences0
    result = {"tokens_per_s": tokens / seconds, "samples_per_s": sequences / seconds, "mean_length": tokens / sequences, "mfu": None}
    if torch.cuda.is_available():
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        peak = throughput.peak_bf16_tflops(torch.cuda.get_device_name())
        flops = throughput.flops_per_token(trainer.model, tokens / sequences)
        if peak is not None and flops is not None:
            result["mfu"] = flops * result["tokens_per_s"] / (peak * 1e12)
    else:
        result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# ---------------------------------------------------------------------------------------------- table


def chosen_variants(names: str | None, gpu: bool) -> list[str]:
    import importlib.util

    if names:
        wanted = [n.strip() for n in names.split(",")]
        unknown = [n for n in wanted if n not in VARIANTS]
        if unknown:
            sys.exit(f"unknown variant(s) {unknown}; choose from: {', '.join(VARIANTS)}")
        return wanted
    chosen = []
    for name, (_, where) in VARIANTS.items():
        if ("gpu" if gpu else "cpu") not in where:
            continue
        if "flash_attn" in where and importlib.util.find_spec("flash_attn") is None:
            continue  # listed in the table as not installed
        chosen.append(name)
    return chosen


def _row(name: str, result: dict, plain: dict | None, job: dict | None) -> str:
    if "error" in result:
        return f"  {name:38} {result['error']}"
    ratio = lambda base: f"{result['tokens_per_s'] / base['tokens_per_s']:6.2f}x" if base and "error" not in base else "     -"  # noqa: E731
    mfu = f"{result['mfu']:6.1%}" if result["mfu"] is not None else "     -"
    return (f"  {name:38} {result['tokens_per_s']:11.0f} {ratio(plain)} {ratio(job)} {result['samples_per_s']:10.1f} "
            f"{result['mean_length']:7.1f} {result['peak_mib']:9.0f} {mfu}")


def print_table(results: dict, prepared: dict, args, gpu: bool, skipped: list[str]) -> None:
    import torch
    import transformers

    from job.training import throughput

    if gpu:
        name = torch.cuda.get_device_name()
        peak = throughput.peak_bf16_tflops(name)
        device = f"{name} (dense bf16 peak {peak:g} TFLOP/s)" if peak else f"{name} (bf16 peak unknown: no MFU)"
    else:
        device = f"CPU x{os.cpu_count()} (no MFU)"
    print(f"\nfinetune-job training throughput: {device}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"batch {args.batch_size}, {args.steps} steps timed after {args.warmup}{', tiny models' if args.tiny else ''}")
    header = f"  {'variant':38} {'tokens/s':>11} {'x plain':>7} {'x job':>7} {'samples/s':>10} {'tok/seq':>7} {'peak MiB':>9} {'MFU':>6}"
    for workload, rows in results.items():
        print(f"\n{workload} ({prepared[workload]['parameters'] / 1e6:.1f}M parameters, {prepared[workload]['rows']} distinct texts)")
        print(header)
        print("  " + "-" * (len(header) - 2))
        plain, job = rows.get(PLAIN), rows.get(JOB)
        for name, result in rows.items():
            print(_row(name, result, plain, job))
    if skipped:
        print(f"\nnot run here ({'flash_attn is not installed' if gpu else 'GPU only'}): {', '.join(skipped)}")
    print("tokens/s: non-padding input tokens per second; x plain, x job: tokens/s against those rows of this run; "
          "samples: rows, or packed documents; tok/seq: mean tokens per sequence; peak MiB: "
          f"{'torch.cuda.max_memory_allocated' if gpu else 'peak RSS of the process (of all rows so far with --same-process)'}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps timed (default: 40 on a GPU, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="steps before timing starts (default: 10 on a GPU, 2 on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step (default: 128 on a GPU, 8 on CPU)")
    parser.add_argument("--tiny", action="store_true", help="2-layer, 64-wide models (the default on CPU)")
    parser.add_argument("--texts", type=int, default=None, help="distinct texts per workload (default: all on a GPU, 400 on CPU)")
    parser.add_argument("--variants", help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--workloads", help=f"comma-separated subset of: {', '.join(WORKLOADS)}")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the ../shared folder (data, vocabulary)")
    parser.add_argument("--same-process", action="store_true", help="run every variant in this process (faster, less isolated)")
    parser.add_argument("--row-timeout", type=float, default=300, help="seconds one row's process may take")
    parser.add_argument("--budget", type=float, help="seconds after which no further row starts (the rest are reported not run)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one", nargs=3, metavar=("WORKLOAD", "VARIANT", "PREPARED_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    gpu = torch.cuda.is_available()
    args.tiny = args.tiny or not gpu
    args.steps = args.steps or (40 if gpu else 5)
    args.warmup = max(1, args.warmup if args.warmup is not None else (10 if gpu else 2))  # timing starts at a step's end
    args.batch_size = args.batch_size or (128 if gpu else 8)
    args.texts = args.texts or (None if gpu else 400)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.one:  # a child: one variant, its result as the last line of output
        workload, variant, prepared = args.one
        print(json.dumps(run_variant(workload, variant, json.loads(Path(prepared).read_text())[workload], args)))
        return

    workloads = [w.strip() for w in args.workloads.split(",")] if args.workloads else list(WORKLOADS)
    if set(workloads) - set(WORKLOADS):
        sys.exit(f"unknown workload(s) {sorted(set(workloads) - set(WORKLOADS))}; choose from: {', '.join(WORKLOADS)}")
    variants = chosen_variants(args.variants, gpu)
    skipped = [] if args.variants else [n for n in VARIANTS if n not in variants]
    with tempfile.TemporaryDirectory(prefix="finetune-bench-gpu-") as tmp:
        prepared = prepare(Path(tmp), args.shared, args.tiny, args.batch_size, args.warmup + args.steps, args.texts)
        (Path(tmp) / "prepared.json").write_text(json.dumps(prepared))
        results = {workload: {} for workload in workloads}
        deadline = time.monotonic() + args.budget if args.budget else None
        for variant in variants:  # variant by variant, both workloads each: the baselines first
            for workload in workloads:
                if "lm" in VARIANTS[variant][1] and "causal" not in workload:
                    continue
                started = time.monotonic()
                if deadline is not None and started > deadline:
                    results[workload][variant] = {"error": f"not run: past --budget {args.budget:g} s"}
                    continue
                print(f"{workload}: {variant} ...", file=sys.stderr, flush=True)
                result = results[workload][variant] = _measure(workload, variant, prepared, Path(tmp) / "prepared.json", args)
                # Each row as it comes, so a run cut short still leaves its figures in the log.
                print(f"  {time.monotonic() - started:.0f} s: {json.dumps(result)}", file=sys.stderr, flush=True)
    print_table(results, prepared, args, gpu, skipped)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name() if gpu else "cpu", "results": results}, indent=2))


def _measure(workload: str, variant: str, prepared: dict, prepared_path: Path, args) -> dict:
    """One variant, in a process of its own unless --same-process; a failure is a row, not the end."""
    if args.same_process:
        try:
            return run_variant(workload, variant, prepared[workload], args)
        except Exception as exc:  # noqa: BLE001  one variant's failure is reported in its row
            return {"error": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}"}
    command = [sys.executable, __file__, "--one", workload, variant, str(prepared_path), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--shared", str(args.shared)]
    if args.tiny:
        command.append("--tiny")
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.row_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"failed: not done in --row-timeout {args.row_timeout:g} s"}
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return {"error": "failed: " + (lines[-1] if lines else f"exit {proc.returncode}")[:150]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
