# Foundation models for medical imaging, hands-on.
#   make lab     set up .venv if missing, then open JupyterLab on notebooks/   (learners)
#   make course  set up .venv if missing, then re-execute every notebook in place, quick profile,
#                and print each notebook's wall time and the total            (the speed benchmark)
#   make test    set up .venv if missing, then unit tests + every notebook under nbval (what CI runs)
SHELL      := /bin/bash
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
# The torch build this course is verified with; override e.g. TORCH_SPEC="torch torchvision" on Colab/GPU boxes.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP      := $(VENV)/.installed
# Torch threads for headless runs: the quick profile's tensors are tiny; on the 2-core build box one thread was
# as fast as two when idle and ~10x faster when the box was shared. `make course THREADS=4` to change.
THREADS    ?= 1
NBVAL_OPTS := --nbval-lax --nbval-current-env --nbval-cell-timeout=300 --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: setup lab course test unit notebooks pretrain clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]" $(TORCH_SPEC)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

lab: setup
	$(BIN)/jupyter lab notebooks/

course: setup
	COURSE_PROFILE=quick OMP_NUM_THREADS=$(THREADS) $(BIN)/python tools/run_course.py notebooks

test: setup
	COURSE_PROFILE=quick HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(THREADS) PYTHONWARNINGS=ignore::DeprecationWarning \
	  $(BIN)/python -m pytest tests notebooks $(NBVAL_OPTS)

unit: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests

notebooks: setup
	COURSE_PROFILE=quick HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest notebooks $(NBVAL_OPTS)

clean:
	rm -rf $(VENV) .pytest_cache
