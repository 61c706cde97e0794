# finetune-job: the two commands a new user runs are `make run` and `make test`.
# Everything runs from a virtual environment in .venv (created on first use).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Extra pip flags, e.g. PIP_FLAGS="--extra-index-url https://download.pytorch.org/whl/cpu" for a CPU torch elsewhere.
PIP_FLAGS ?=
export HF_HUB_OFFLINE ?= 1

.PHONY: venv run test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(PIP_FLAGS) -e '.[test]'
	touch $@

venv: $(STAMP)

## run: fine-tune the embedded default (shipped demo data, tiny model built offline) -> ./outputs/<run-id>/
run: $(STAMP)
	$(BIN)/finetune-job run

## test: the whole suite (starts its own S3 server; builds and runs the container where Docker is available)
test: $(STAMP)
	$(BIN)/python -m pytest

## test-fast: everything but the slow tests (real-data training, image builds)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

## bench: padding-to-max-length against dynamic padding, one table
bench: $(STAMP)
	$(BIN)/python tests/bench_padding.py

clean:
	rm -rf outputs .pytest_cache build *.egg-info
