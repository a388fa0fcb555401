# Foundation models for medical imaging, hands-on.
#   make lab     set up .venv if missing, then open JupyterLab on notebooks/   (learners)
#   make course  set up .venv if missing, then re-execute every notebook in place, quick profile,
#                two at a time (JOBS=2, one torch thread each), and print each notebook's wall time,
#                their sum and the wall time of the whole run                 (the speed benchmark)
#   make test    set up .venv if missing, then unit tests + every notebook under nbval + the reproducibility
#                check of notebook 00 + the CI slice of smoke-full (notebook 00 in smoke mode and the
#                real-architecture tests at real sizes) (what CI runs)
#   make slides  one offline reveal.js deck per notebook + an index page in slides/build/ (instructors)
#   make repro   execute every notebook twice and diff the text outputs (tools/repro_check.py)
#   make stall-check  execute notebook 00 30 times headless and count kernel-messaging stalls
#   make smoke-full   every notebook through the full profile's code paths on CPU, sizes capped (COURSE_SMOKE=1)
#   make gpu-check    on a CUDA machine: every notebook, full profile -> benchmarks/gpu_times.json
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
# Fail fast: a quick-profile cell takes well under a minute on 2 cores, so a cell that runs 120 s is stuck;
# a notebook that runs 600 s in all is stopped (tools/nbval_guard.py), naming the notebook, cell and seconds.
# Notebooks executed at the same time by `make course` (one kernel each, THREADS torch threads each): 2 uses
# both cores of the build box; `make course JOBS=1` runs them one after another as a learner would.
JOBS       ?= 2
CELL_TIMEOUT ?= 120
NB_CAP     ?= 600
NBVAL_OPTS := --nbval-lax --nbval-current-env --nbval-cell-timeout=$(CELL_TIMEOUT) \
              --nbval-sanitize-with tests/nbval_sanitize.cfg -p tools.nbval_guard --nb-cap=$(NB_CAP)
HEADLESS   := COURSE_PROFILE=quick HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(THREADS)

.PHONY: setup lab course test unit notebooks slides repro repro-threads stall-check smoke-full gpu-check pretrain clean

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
	COURSE_PROFILE=quick OMP_NUM_THREADS=$(THREADS) $(BIN)/python tools/run_course.py notebooks \
	  --cell-timeout $(CELL_TIMEOUT) --notebook-cap $(NB_CAP) --jobs $(JOBS)

test: setup
	$(HEADLESS) PYTHONWARNINGS=ignore::DeprecationWarning $(BIN)/python -m pytest tests notebooks $(NBVAL_OPTS)
	$(HEADLESS) $(BIN)/python tools/repro_check.py notebooks/00_welcome_and_setup.ipynb
	COURSE_PROFILE=full COURSE_SMOKE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(THREADS) $(BIN)/python tools/smoke_full.py --ci

unit: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests

notebooks: setup
	$(HEADLESS) $(BIN)/python -m pytest notebooks $(NBVAL_OPTS)

# one offline reveal.js deck per notebook + index into slides/build/ (npm fetches the pinned front-end packages once)
slides: setup
	$(BIN)/python tools/build_slides.py notebooks

# every notebook twice with the same settings: text outputs must be identical (timings sanitised)
repro: setup
	$(HEADLESS) $(BIN)/python tools/repro_check.py notebooks

# 1 vs 2 torch threads: same tables within the tolerance printed by the tool
repro-threads: setup
	$(HEADLESS) $(BIN)/python tools/repro_check.py --threads 1 2 notebooks

STALL_RUNS ?= 30
stall-check: setup
	$(HEADLESS) $(BIN)/python tools/stall_check.py -n $(STALL_RUNS) notebooks/00_welcome_and_setup.ipynb

smoke-full: setup
	COURSE_PROFILE=full COURSE_SMOKE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(THREADS) $(BIN)/python tools/smoke_full.py notebooks

gpu-check: setup
	$(BIN)/python tools/gpu_check.py notebooks

clean:
	rm -rf $(VENV) .pytest_cache
