# softmax-lab: `make train`, `make test`, `make test-all`, `make ui`, `make bench`, `make figures` (each installs first
# when needed).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 5000
SERVE_PORT ?= 5001
STORE  ?= sqlite:///$(CURDIR)/outputs/mlflow.db
ARGS   ?=

.PHONY: install train test test-all mutation ui serve bench gpu-check figures lint clean constraints

install: $(STAMP)

# Re-installs only when the declared dependencies or their pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -c "from softmax_lab.tracking.store import new_sqlite_store, store_template; import os; \
		new_sqlite_store(store_template().with_name('probe.db')); os.remove(store_template().with_name('probe.db'))"
	touch $(STAMP)

train: install
	$(PY) src/train.py $(ARGS)

# One worker per core. The fast loop: units and in-process trainings on tiny data; test-all adds the command line,
# sweeps, DDP, signals, servers and the browser, and prints line coverage of src/ (what CI runs).
test: install
	$(PY) -m pytest -q -m "not slow" -n auto $(ARGS)

test-all: install
	$(PY) -m pytest -q -n auto --cov --cov-report=term --durations=15 $(ARGS)

# Mutation testing of the core (maths, data, steps, trainer/flags.py) with the fast tests: mutmut 3 (config in
# pyproject.toml), from scratch each time, then the share of mutants killed per part against its target
# (tests/mutation_scores.py; equivalent mutants in tests/equivalent_mutants.md). About 45 minutes on 2 quiet cores.
mutation: install
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children $$(nproc) || true  # its progress: mutants done, killed, survived
	$(PY) tests/mutation_scores.py

# The MLflow UI for the project's store (or STORE=...), on loopback only: prints the links that open the
# runs table, then serves the store with one worker (starts in seconds).
ui: install
	@$(PY) -m softmax_lab.tracking.ui --store "$(STORE)" --host 127.0.0.1 --port $(PORT)

# A logged model over REST (POST /invocations, pixels in [0, 1]): make serve MODEL=models:/<model id> (printed by
# each run), from the project's store or MLFLOW_TRACKING_URI. MLflow starts uvicorn from the PATH: the venv's.
serve: install
	@test -n "$(MODEL)" || { echo "make serve needs MODEL=models:/<model id> (each run prints its own)"; exit 2; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-$(STORE)}" \
		$(PY) -m mlflow models serve -m "$(MODEL)" --env-manager local --host 127.0.0.1 --port $(SERVE_PORT)

bench: install
	$(PY) benchmarks/bench.py $(ARGS)

# Where a GPU is: each impl at 32-true and bf16-mixed, DDP on every visible GPU, our epoch against a plain GPU loop;
# one JSON (outputs/gpu_check.json), a few minutes. Elsewhere it says there is no GPU (exit 2).
gpu-check: install
	$(PY) benchmarks/gpu_check.py $(ARGS)

# The loss zoo (docs/loss_zoo.png): each loss, its likelihood and gradient, from src/softmax_lab/maths/losses.py;
# the stability edge of each loss and sharpness over training (docs/sharpness.md, docs/sharpness.png; real data,
# 5 to 10 minutes on 2 cores).
figures: install
	$(PY) -m softmax_lab.pictures.loss_zoo
	$(PY) -m softmax_lab.jobs.sharpness_study $(ARGS)

lint: install
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf outputs/runs outputs/sweeps outputs/bench outputs/multirun .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# After testing newer versions together: pin exactly what is installed.
constraints:
	( echo "# Versions tested together on Python 3.11 (make install uses this file). Regenerate with \`make constraints\` after testing an upgrade."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^softmax-lab' ) > constraints.txt
