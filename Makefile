# Two set-up commands: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch: a bare `torch` requirement pulls a multi-GB CUDA build.
# On a GPU machine: make TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
# The browser tests drive Debian's chromium headless; `make test` installs it when missing.
CHROMIUM ?= /usr/bin/chromium

.PHONY: install demo test test-fast bench-gpu lint samples bench clean stack-up stack-down stack-status

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the headless browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "the browser tests need chromium: sudo apt-get install chromium (or CHROMIUM=/path)"; exit 1; \
	fi

demo: $(STAMP)
	$(BIN)/python -m flows.demo

test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast tier: every test not marked `slow` (no servers, no browser, no whole job): 2 min 28 s
# in a clean clone on 2 cores; `make test` took 33 min there.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check e4t tasks flows infra tests
	$(BIN)/mypy e4t

samples: $(STAMP)
	$(BIN)/e4t samples data/samples --negatives

bench: $(STAMP)
	$(BIN)/e4t bench curate

# The GPU check (infra/gpu-check.sh): one JSON line per figure, then one per stage of the
# end-to-end run (FACES=DIR or PHOTOS=DIR; E2E=0 or BENCH=0 leaves a part out). Its knobs pass
# through as variables: make bench-gpu ARCH=tiny DEVICE=cpu DTYPE=fp32 RES=64 STEPS=2 on a CPU.
bench-gpu:
	bash infra/gpu-check.sh

# The local stack (infra/stack.py): SeaweedFS S3, MLflow server, Prefect server + worker.
STACK_DIR ?= .stack
stack-up: $(STAMP)
	$(BIN)/python -m infra.stack up $(STACK_DIR)

stack-down: $(STAMP)
	$(BIN)/python -m infra.stack down $(STACK_DIR)

stack-status: $(STAMP)
	$(BIN)/python -m infra.stack status $(STACK_DIR)

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache *.egg-info
