#!/usr/bin/env bash
# The GPU check (issue 13) in one go: the GPU's name, packing checked on it, `make bench-gpu`'s table,
# and the demo and tiny causal-lm runs with their train tokens/s and MFU.
#
#   bash benchmarks/gpu_check.sh prepare   # here, with PyPI: fills .gpu/ (git-ignored) with what the GPU machine lacks
#   bash benchmarks/gpu_check.sh           # there, from the repository root, .gpu/ beside it; about 8 minutes on an H100
#
# With this workplace's device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu/wheels", ".gpu/shared"], timeout_s=600);
# the table, its JSON and the logs come back from $OUT.
#
# What the GPU machine must already have: a python3 with a CUDA build of torch (the device machines'
# image: torch 2.11 + CUDA 13, transformers 5.17, accelerate, scikit-learn, matplotlib, pyyaml, click,
# pytest, tokenizers, safetensors, pyarrow, pandas). It cannot download, so `prepare` brings the rest
# as wheels for Python 3.12 on x86-64 (the versions of this checkout's .venv): transformers (the version
# the job is tested with), datasets with dill and multiprocess, boto3 with botocore, s3transfer and
# jmespath; and the files of ../shared the benchmark and the runs read (about 2 MB). They are installed
# with --target into .gpu/site and put on PYTHONPATH, not into a venv: that image's python3 is itself a
# venv, and a venv made from it would not see its torch. Without .gpu/wheels (a GPU machine with
# network) the same packages come from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GPU=.gpu
PACKAGES=(transformers datasets dill multiprocess boto3 botocore s3transfer jmespath)
SHARED_FILES=(data/rt-polaritydata/rt-polarity.pos data/rt-polaritydata/rt-polarity.neg models/bert-uncased-vocab/vocab.txt
              data/multi30k-en-de/train.en.gz data/multi30k-en-de/val.en.gz data/multi30k-en-de/test_2016_flickr.en.gz)

if [ "${1:-}" = prepare ]; then
    pins=()
    for name in "${PACKAGES[@]}"; do
        pins+=("$name==$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")")
    done
    rm -rf "$GPU" && mkdir -p "$GPU/wheels"  # a fresh folder: what travels must stay small (the device tool's 64 MiB)
    .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$GPU/wheels" "${pins[@]}"
    for file in "${SHARED_FILES[@]}"; do
        mkdir -p "$GPU/shared/$(dirname "$file")" && cp "../shared/$file" "$GPU/shared/$file"
    done
    du -sh "$GPU"
    echo "ready: run 'bash benchmarks/gpu_check.sh' on the GPU machine with $GPU/ beside it (device tool: carry [\"$GPU/wheels\", \"$GPU/shared\"])"
    exit 0
fi

PY=$(command -v "${PYTHON:-python3}")
[[ $PY = /* ]] || PY="$PWD/$PY"  # the runs below start in another folder
OUT_DIR=${OUT:-$GPU/out}
SHARED=../shared
[ -f "$SHARED/models/bert-uncased-vocab/vocab.txt" ] || SHARED=$GPU/shared
mkdir -p "$OUT_DIR" "$GPU/site"
export PYTHONPATH="$PWD/$GPU/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G "$GPU/wheels/*.whl" >/dev/null; then
    $PY -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$GPU/site" "$GPU"/wheels/*.whl
else
    $PY -m pip install --quiet --no-deps --upgrade --target "$GPU/site" "${PACKAGES[@]}"
fi

echo "== the machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY - <<'PYTHON'
import torch, transformers, datasets, accelerate
import job.run  # every module a run imports loads
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"datasets {datasets.__version__}, accelerate {accelerate.__version__}")
print("GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible")
PYTHON
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() or '${GPU_CHECK_ALLOW_CPU:-}' else 'no GPU visible to $PY')"

echo "== make bench-gpu (benchmarks/bench_gpu.py)"
timeout 480 $PY benchmarks/bench_gpu.py --shared "$SHARED" --json "$OUT_DIR/bench-gpu.json" --budget 360 ${BENCH_ARGS:-} \
    2> "$OUT_DIR/bench-gpu.log" | tee "$OUT_DIR/bench-gpu.txt" || { echo "bench-gpu failed or timed out; its log:"; tail -40 "$OUT_DIR/bench-gpu.log"; }

echo "== packing on this device (tests/tasks/test_packing.py)"
$PY -m pytest tests/tasks/test_packing.py -q -p no:cacheprovider -k "${PACKING_TESTS:-cuda}" 2>&1 | tail -5 || true

echo "== the demo run and the tiny causal-lm run: train tokens/s and MFU from metrics.json"
runs=$(mktemp -d)
(cd "$runs" && FINETUNE_RUN_ID=demo $PY -m job run --set "output.uri=$runs/out" > "$OUT_DIR/demo.log" 2>&1) || tail -20 "$OUT_DIR/demo.log"
m30k="$ROOT/$SHARED/data/multi30k-en-de"
[[ $SHARED = /* ]] && m30k="$SHARED/data/multi30k-en-de"
(cd "$runs" && FINETUNE_RUN_ID=causal-lm $PY -m job run --config "$ROOT/job/configs/causal-lm-tiny.yaml" \
    --set "output.uri=$runs/out" --set "data.train_files=$m30k/train.en.gz" --set "data.validation_files=$m30k/val.en.gz" \
    --set "data.test_files=$m30k/test_2016_flickr.en.gz" > "$OUT_DIR/causal-lm.log" 2>&1) || tail -20 "$OUT_DIR/causal-lm.log"
$PY - "$runs/out" <<'PYTHON'
import json, pathlib, sys
for run in ("demo", "causal-lm"):
    path = pathlib.Path(sys.argv[1], run, "metrics.json")
    if not path.is_file():
        print(f"{run}: no metrics.json (see its log)")
        continue
    m = json.loads(path.read_text())
    mfu = f"{m['train_mfu']:.2%}" if m.get("train_mfu") is not None else "none"
    print(f"{run}: train_tokens {m['train_tokens']}, train_tokens_per_second {m['train_tokens_per_second']}, "
          f"train_mfu {mfu}, train_runtime {m['train_runtime']} s, test_loss {m.get('test_loss', float('nan')):.4f}")
PYTHON
grep -h "causal-lm: \|attention" "$OUT_DIR/causal-lm.log" | head -3 || true
