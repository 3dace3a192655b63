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

.PHONY: setup demo test test-fast lint clean-venv device-wheels device-sprint

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

# --- the GPU sprint (python -m zr_ablate.bench.sprint) ---------------------------------------------------------
# The lent GPU machine is bare (Python 3.12, torch, Lightning; no Hydra, omegaconf or W&B; no network; no
# ../shared). `make device-wheels`, here, puts what it lacks (cp312 manylinux wheels) and PTB into .device/
# (git-ignored: name it in the device tool's carry). `make device-sprint`, there, installs the wheels and
# runs the sprint into $$OUT. DRY=1 runs the same plumbing here on the CPU (tiny profile, no wheels).
DEVICE := .device
DEVICE_PKGS := hydra-core==1.3.8 omegaconf==2.3.1 hydra-joblib-launcher==1.2.0 wandb==0.31.0
OUT ?= outputs/sprint
SPRINT_ARGS ?=
# Successive leases work through the four placements: skip what reports/gpu-medium/runs holds, and plan from
# the committed H100 measurements rather than spend the lease measuring again (SPRINT_DONE= to measure).
SPRINT_DONE ?= $(if $(wildcard reports/gpu-medium/runs),--done reports/gpu-medium/runs) \
	$(if $(wildcard reports/bench/gpu-h100.json),--bench reports/bench/gpu-h100.json)

device-wheels:
	rm -rf $(DEVICE)/wheels && mkdir -p $(DEVICE)/wheels $(DEVICE)/ptb
	$(PY) -m pip wheel --quiet --no-deps -w $(DEVICE)/wheels antlr4-python3-runtime==4.9.3  # sdist only on PyPI
	$(PY) -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--find-links $(DEVICE)/wheels -d $(DEVICE)/wheels $(DEVICE_PKGS)
	cp $(or $(PTB_DIR),../shared/data/ptb)/ptb.*.txt $(DEVICE)/ptb/
	du -sh $(DEVICE)

ifdef DRY
device-sprint: setup
	$(BIN)/python -m zr_ablate.bench.sprint --dry --out $(OUT) $(if $(PTB_DIR),--ptb $(PTB_DIR)) $(SPRINT_ARGS)
else
device-sprint:
	@start=$$(date +%s); \
	python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(DEVICE)/wheels/*.whl \
	&& PYTHONPATH=/tmp/site:$(CURDIR) python3 -m zr_ablate.bench.sprint --out $(OUT) --ptb $(DEVICE)/ptb \
		--started-at $$start $(SPRINT_DONE) $(SPRINT_ARGS)
endif
