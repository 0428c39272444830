# chargpt: two commands.  `make train` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Machines without internet find tiny Shakespeare in ../shared/data (see README: "Where the corpus comes from").
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/tinyshakespeare/input.txt),)
export CHARGPT_DATA ?= $(SHARED_DATA)
endif
# Tests and CI never talk to a wandb server.
export WANDB_SILENT ?= true

.PHONY: setup train test test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "chargpt needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1): set PYTHON=python3.11" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23" "setuptools>=77" wheel
	$(PY) -m pip install --quiet -c requirements.lock -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/chargpt prepare --dataset shakespeare --out data/shakespeare
	$(VENV)/bin/chargpt train --data data/shakespeare --time-budget 5m

# One worker per core, each taking a whole test module at a time, the longest modules first (tests/conftest.py,
# LONGEST_FIRST): the workers finish together, and no module's fixtures are made twice, as they were when
# worksteal split a module between workers (2 cores, the same tests: 528 s with worksteal, 513 s with loadfile).
# `make test` (CI's command) leaves out the 69 tests marked slow (the README's console examples, torchrun, the
# compile cache, ...: about 45% of the suite's time, which no longer fitted CI's 10 minutes on 2 cores);
# `make test-all` runs every test.
PYTEST := $(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(PYTEST) -m "not slow"

test-all: $(STAMP)
	$(PYTEST)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs data sweeps wandb .pytest_cache
