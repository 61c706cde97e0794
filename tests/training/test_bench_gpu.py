"""`make bench-gpu` keeps working without a GPU: its CPU form (tiny models, no MFU) prints the table."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED, base_env

VOCAB = SHARED / "models" / "bert-uncased-vocab" / "vocab.txt"


@pytest.mark.slow  # a minute of benchmark runs: make test, not the edit-test loop
@pytest.mark.skipif(not VOCAB.is_file(), reason="../shared is not present")
def test_bench_gpu_runs_on_cpu_and_prints_one_table(tmp_path):
    variants = "plain Trainer,job defaults,packing off (blocks across documents)"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--same-process", "--steps", "2", "--warmup", "1",
         "--texts", "200", "--variants", variants, "--json", str(tmp_path / "bench.json")],
        env=base_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "CPU x" in out and "(no MFU)" in out
    for workload in ("bert-base classification", "llama-125m causal-lm"):
        assert workload in out
    rows = {line.split("  ")[1].strip(): line for line in out.splitlines() if re.match(r"  (plain|job|packing)", line)}
    assert set(rows) == set(variants.split(",")), out
    results = json.loads((tmp_path / "bench.json").read_text())["results"]
    for workload, measured in results.items():
        assert measured["plain Trainer"]["mfu"] is None  # no GPU: no MFU, shown as '-'
        for name, result in measured.items():
            assert "error" not in result, (workload, name, result)
            assert result["tokens_per_s"] > 0 and result["samples_per_s"] > 0
    lm = results["llama-125m causal-lm"]
    assert lm["plain Trainer"]["mean_length"] < 40  # a caption per row, padding not counted
    assert lm["job defaults"]["mean_length"] < 40  # packed: each caption is its own sequence
    assert lm["packing off (blocks across documents)"]["mean_length"] > 100  # blocks of 128 across captions
    assert results["bert-base classification"]["job defaults"]["mean_length"] > 100  # texts of about 128 tokens
