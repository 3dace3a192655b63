# Two entry points that each set themselves up: `make demo` and `make test`.
# Needs only Python 3.11+ and make. Torch is installed first, on its own, so that a CPU-only machine can
# take a CPU build: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PTB_DIR ?=
DEMO_ARGS ?=

BIN := $(VENV)/bin

.PHONY: setup demo test clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# The four dropout placements on the CPU-sized demo profile, two jobs at a time with one torch thread
# each (a 2x200 model gains little from a second thread, so this is the faster use of 2 cores).
# Progress: one log line per epoch and job.
demo: setup
	$(BIN)/python run.py -m dropout=none,naive,zaremba,variational model=demo sweep=demo \
		hydra/launcher=local trainer.enable_progress_bar=false $(if $(PTB_DIR),data.dir=$(PTB_DIR)) $(DEMO_ARGS)

test: setup
	$(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)
