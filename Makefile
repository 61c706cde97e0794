# finetune-job: the two commands a new user runs are `make run` and `make test`.
# Everything runs from a virtual environment in .venv (created on first use).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Extra pip flags, e.g. PIP_FLAGS="--extra-index-url https://download.pytorch.org/whl/cpu" for a CPU torch elsewhere.
PIP_FLAGS ?=
export HF_HUB_OFFLINE ?= 1

.PHONY: venv run test test-fast bench bench-gpu bench-transfer bench-seed bench-streaming clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(PIP_FLAGS) -e '.[test]'
	touch $@

venv: $(STAMP)

## run: fine-tune the embedded default (shipped demo data, tiny model built offline) -> ./outputs/<run-id>/
run: $(STAMP)
	$(BIN)/finetune-job run

# The suite runs on every CPU (pytest-xdist, one worker per logical CPU; TEST_WORKERS=0 runs it in this process).
# loadscope keeps each file on one worker; tests/conftest.py orders the files, longest first.
TEST_WORKERS ?= logical
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)

## test: the whole suite (starts its own S3 server per worker; builds and runs the container where Docker is available)
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) --durations=40

## test-fast: everything but the slow tests (real-data training, image builds, distributed runs): the edit-test loop
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow"

## soak: the long fault-injection run: 12 runs at 10-30% storage faults and 40 promote/rollback commands (~15 min)
.PHONY: soak
soak: $(STAMP)
	FAULT_SOAK=1 $(BIN)/python -m pytest tests/e2e/test_faults_runs.py -k soak -s

## chaos: preemption as a cluster does it: SIGTERM at random moments, 15% storage faults, a fresh pod per attempt,
## against an undisturbed run (CHAOS_ARGS="--worlds 2,1,2", "--model ../shared/models/all-MiniLM-L6-v2 --rows 768")
.PHONY: chaos
CHAOS_ARGS ?=
chaos: $(STAMP)
	$(BIN)/python benchmarks/chaos.py $(CHAOS_ARGS)

## bench: padding (classification, causal-lm packing) and evaluation costs, against baselines in the same run
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_padding.py
	$(BIN)/python benchmarks/bench_evaluation.py

## bench-transfer: full fine-tuning, head-only and LoRA on all-MiniLM-L6-v2 (../shared), one table
bench-transfer: $(STAMP)
	$(BIN)/python benchmarks/bench_transfer.py

## bench-streaming: 10 million rows streamed from the S3 test server, peak RSS and data wait per DataLoader
## setting (BENCH_STREAMING_FLAGS="--rows 1000000 --steps 40" for a quicker look)
BENCH_STREAMING_FLAGS ?=
bench-streaming: $(STAMP)
	$(BIN)/python benchmarks/bench_streaming.py $(BENCH_STREAMING_FLAGS)

## bench-seed: the seed's workload (all-MiniLM-L6-v2, rotten_tomatoes, 1 epoch): the job's three modes against
## transformers' run_classification.py, given as HF_RUN_CLASSIFICATION=PATH (its rows skipped without it;
## they need `pip install evaluate`); BENCH_SEED_FLAGS="--train-rows 1000" for a subset, "--repeat 3" for the
## job's rows in 3 rounds (median ratios: one row's slow spell on a shared machine moves them less)
HF_RUN_CLASSIFICATION ?=
BENCH_SEED_FLAGS ?=
bench-seed: $(STAMP)
	$(BIN)/python benchmarks/bench_seed.py $(if $(HF_RUN_CLASSIFICATION),--reference $(HF_RUN_CLASSIFICATION)) $(BENCH_SEED_FLAGS)

## bench-gpu: training tokens/s and MFU, the job's defaults against plain Trainer and each GPU default on/off
## (tiny models on CPU; on a GPU machine without this venv: bash benchmarks/gpu_check.sh)
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/bench_gpu.py

# ---- the container image (docker/Dockerfile) ----
.PHONY: image image-gpu docker-run
IMAGE ?= finetune-job:cpu
IMAGE_GPU ?= finetune-job:gpu
CPU_BASE_IMAGE ?= debian:bookworm-slim
CPU_TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
# Extra CAs the image trusts (build and run time): by default the ones this host adds to its own store.
CA_CERTS ?= $(wildcard /usr/local/share/ca-certificates/*.crt)
# A folder of wheels to install from, e.g. a CPU torch wheel (then no index is asked for torch).
WHEELS ?=
DOCKER_BUILD_FLAGS ?=
OUTPUT_DIR ?= $(CURDIR)/outputs
RUN_ARGS ?= run

# $(1) tag, $(2) extra build args. Fills docker/ca-certificates/ and docker/wheels/ (replacing what is
# there; wheels are hard-linked where possible), then builds with BuildKit where buildx is installed.
define docker_build
	rm -f docker/ca-certificates/*.crt docker/wheels/*.whl
	for cert in $(CA_CERTS); do cp "$$cert" "docker/ca-certificates/$$(basename "$${cert%.*}").crt"; done
	$(if $(WHEELS),for wheel in $(WHEELS)/*.whl; do ln -f "$$wheel" docker/wheels/ 2>/dev/null || cp "$$wheel" docker/wheels/; done)
	DOCKER_BUILDKIT=$$(docker buildx version >/dev/null 2>&1 && echo 1 || echo 0) docker build -f docker/Dockerfile -t $(1) \
	  --build-arg VERSION=$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml) \
	  --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
	  --build-arg CREATED=$$(git log -1 --format=%cI 2>/dev/null || echo unknown) \
	  $(2) $(DOCKER_BUILD_FLAGS) .
endef

## image: the CPU image (Debian + CPU torch), tagged $(IMAGE)
image:
	$(call docker_build,$(IMAGE),--build-arg BASE_IMAGE=$(CPU_BASE_IMAGE) --build-arg TORCH_INDEX_URL=$(CPU_TORCH_INDEX_URL))

## base-image: Debian 12 minbase made with debootstrap and imported as $(DEBIAN_BASE_IMAGE), where no registry
## is reachable (then: make image CPU_BASE_IMAGE=$(DEBIAN_BASE_IMAGE)); nothing is done when it exists already
# Like the official slim images it keeps no package lists or downloaded packages (the Dockerfile updates).
.PHONY: base-image
DEBIAN_BASE_IMAGE ?= finetune-job-base:bookworm
DEBIAN_MIRROR ?= http://deb.debian.org/debian
base-image:
	docker image inspect $(DEBIAN_BASE_IMAGE) >/dev/null 2>&1 || { \
	  rootfs=$$(mktemp -d) \
	  && debootstrap --variant=minbase bookworm "$$rootfs" $(DEBIAN_MIRROR) >/dev/null \
	  && rm -rf "$$rootfs"/var/lib/apt/lists/* "$$rootfs"/var/cache/apt/* \
	  && tar -C "$$rootfs" -c . | docker import - $(DEBIAN_BASE_IMAGE) >/dev/null; \
	  status=$$?; rm -rf "$$rootfs"; exit $$status; }

## image-gpu: the CUDA image (nvidia/cuda base + PyPI's CUDA torch), tagged $(IMAGE_GPU)
image-gpu:
	$(call docker_build,$(IMAGE_GPU),)

## docker-run: the embedded default inside the CPU image: no network, read-only root, results in $(OUTPUT_DIR)/<run-id>/
# Runs as your uid so the files it writes are yours; all scratch and caches live on the /tmp tmpfs.
docker-run: image
	mkdir -p $(OUTPUT_DIR)
	docker run --rm --network none --read-only --tmpfs /tmp:exec,mode=1777 \
	  --cap-drop ALL --security-opt no-new-privileges --user "$$(id -u):$$(id -g)" \
	  -v $(OUTPUT_DIR):/work/outputs $(IMAGE) $(RUN_ARGS)

clean:
	rm -rf outputs .pytest_cache build *.egg-info
