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

.PHONY: setup demo test test-fast lint clean-venv wheelhouse install-wheelhouse

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# The four dropout placements on the CPU-sized demo profile, two jobs at a time with one torch thread
# each (a 2x200 model gains little from a second thread, so this is the faster use of 2 cores), then their
# report in $(DEMO_OUT)/demo/report/ (also when a job failed: the report says which). Progress: one log
# line per epoch and job (no progress bars: two jobs share the terminal).
DEMO_OUT ?= outputs
demo: setup
	$(BIN)/python run.py -m dropout=none,naive,zaremba,variational model=demo sweep=demo out_root=$(DEMO_OUT) \
		hydra/launcher=local trainer.enable_progress_bar=false $(if $(PTB_DIR),data.dir=$(PTB_DIR)) $(DEMO_ARGS); \
	status=$$?; $(BIN)/python -m zr_ablate.report $(DEMO_OUT)/demo --out $(DEMO_OUT)/demo/report; exit $$status

# Two workers (pytest-xdist), a test file at a time each, so a module's fixtures run once: the subprocess
# and SLURM tests mostly wait, and CI's 2 cores finish in ~11 min instead of ~17. TEST_WORKERS=0: serial.
# The tests read PTB from $ZR_ABLATE_PTB_DIR; PTB_DIR=<folder> sets it for them.
TEST_WORKERS ?= 2
TEST_ENV := $(if $(PTB_DIR),ZR_ABLATE_PTB_DIR=$(PTB_DIR))
test: setup
	$(TEST_ENV) $(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

# The edit-test loop: everything but the tests that train jobs in subprocesses (~1 min on 2 cores).
test-fast: setup
	$(TEST_ENV) $(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)

# --- a GPU node without network ---------------------------------------------------------------------------------
# A bare GPU node often has Python, torch and Lightning but not the rest of what zr_ablate needs, and no network
# to fetch it. On a machine with network, `make wheelhouse` downloads wheels of what the node lacks (WHEEL_PKGS,
# in the version ranges pyproject.toml gives them, with their dependencies) for the node's Python
# (PYTHON_VERSION, default this machine's) and platform (WHEEL_PLATFORMS) into $(WHEELHOUSE). Copy the checkout
# with its wheelhouse to the node; there `make install-wheelhouse` installs them from it, with no index
# (PIP_INSTALL_ARGS: e.g. --user). Then, for instance (docs/time-budget.md):
#   python3 -m zr_ablate.bench.budget grid=ablation_medium data.dir=<PTB folder> logger.mode=offline --budget 40m
WHEELHOUSE ?= build/wheelhouse
PYTHON_VERSION ?= $(shell $(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
WHEEL_PLATFORMS ?= manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
WHEEL_PKGS ?= hydra-core hydra-joblib-launcher hydra-submitit-launcher wandb
PIP_INSTALL_ARGS ?=
# omegaconf 2.3 (hydra-core's) pins antlr4-python3-runtime 4.9.*, which PyPI has as source only: built here.
ANTLR ?= antlr4-python3-runtime==4.9.3
# WHEEL_PKGS with their version ranges from pyproject.toml, each quoted for the shell.
WHEEL_SPECS = $(shell $(PY) -c 'import re, sys, tomllib; \
	deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; \
	print(" ".join(repr(d) for d in deps if re.split(r"[<>=!~;\[ ]", d)[0] in sys.argv[1:]))' $(WHEEL_PKGS))

wheelhouse:
	mkdir -p $(WHEELHOUSE)
	$(PY) -m pip wheel --quiet --no-deps -w $(WHEELHOUSE) "$(ANTLR)"
	$(PY) -m pip download --quiet --only-binary=:all: --python-version $(PYTHON_VERSION) --implementation cp \
		$(foreach p,$(WHEEL_PLATFORMS),--platform $(p)) --find-links $(WHEELHOUSE) -d $(WHEELHOUSE) $(WHEEL_SPECS)
	@echo "$(WHEELHOUSE): $$(ls $(WHEELHOUSE) | wc -l) wheels, $$(du -sh $(WHEELHOUSE) | cut -f1), for Python $(PYTHON_VERSION)"

install-wheelhouse:
	$(PY) -m pip install --no-index --find-links $(WHEELHOUSE) $(PIP_INSTALL_ARGS) $(WHEEL_SPECS)
