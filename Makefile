# The two commands a person needs: `make dev` starts DataLoader locally, `make test` runs the tests.
# Both create the virtual environment and install what they need on a fresh machine.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The scripts' unit tests under Python 3.12 too (Databricks Runtime 16.x / 17.x): `make test-py312`.
# Not part of `make test`: it needs a python3.12 on the machine and a second install (~2 min).
PYTHON312 ?= python3.12
VENV312   := .venv312
STAMP312  := $(VENV312)/.installed
SCRIPT_TESTS := tests/test_loader_units.py tests/test_loader_spark.py tests/test_loader_mssql_oracle.py \
	tests/test_redaction.py tests/test_retry_classifier.py tests/test_spark_write_counts.py \
	tests/test_runtime_floor.py

.PHONY: dev test test-py312 bench install clean-local

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/dataloader dev

# Test files run on 4 workers (pytest-xdist, one file per worker at a time): most tests wait on
# real processes (dagster dev, Pipes scripts, Spark), so 4 workers fit a 2-core machine.
# `make test PYTEST_WORKERS=0` runs them one after another.
PYTEST_WORKERS ?= 4

test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

$(STAMP312): pyproject.toml
	@command -v $(PYTHON312) >/dev/null 2>&1 || { echo "$(PYTHON312) not found; set PYTHON312=/path/to/python3.12"; exit 1; }
	test -x $(VENV312)/bin/python || $(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install --quiet --upgrade pip
	$(VENV312)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP312)

test-py312: $(STAMP312)
	$(VENV312)/bin/python -m pytest $(SCRIPT_TESTS) $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean-local:
	rm -rf .dataloader
