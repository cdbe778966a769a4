# The two commands a person needs: `make dev` starts DataLoader locally, `make test` runs the tests.
# Both create the virtual environment and install what they need on a fresh machine.

# Supported Pythons: 3.11 to 3.14 (pyproject.toml's requires-python; the embedded PostgreSQL wheel
# has builds for each). `make` picks the first of python3.11, python3.12, python3.13, python3.14 that
# runs, else python3 if it is 3.11 or newer; `make PYTHON=/path/to/python` overrides. Each candidate
# is run, not only looked up: a pyenv shim for a version that is installed but not selected exists
# on PATH and fails, and pyenv's own install of that version is then used.
SUPPORTED := 3.11 3.12 3.13 3.14
IS_SUPPORTED := -c 'import sys; sys.exit(sys.version_info < (3, 11))'
find_python = $(shell for v in $(1); do \
	python$$v $(IS_SUPPORTED) >/dev/null 2>&1 && { echo python$$v; exit 0; }; \
	pre=$$(pyenv prefix $$v 2>/dev/null) && "$$pre/bin/python$$v" $(IS_SUPPORTED) >/dev/null 2>&1 \
		&& { echo "$$pre/bin/python$$v"; exit 0; }; \
	done; \
	[ -z "$(2)" ] || { python3 $(IS_SUPPORTED) >/dev/null 2>&1 && echo python3; })
PYTHON ?= $(call find_python,$(SUPPORTED),or-python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The scripts' unit tests under Python 3.12 too (Databricks Runtime 16.x / 17.x): `make test-py312`.
# Not part of `make test`: it needs a python3.12 on the machine and a second install (~2 min).
PYTHON312 ?= $(call find_python,3.12)
VENV312   := .venv312
STAMP312  := $(VENV312)/.installed
SCRIPT_TESTS := tests/loader/arrow/test_loader_units.py tests/loader/spark/test_loader_spark.py tests/loader/arrow/test_loader_mssql_oracle.py \
	tests/loader/arrow/test_redaction.py tests/loader/arrow/test_retry_classifier.py tests/loader/spark/test_spark_write_counts.py \
	tests/loader/spark/test_runtime_floor.py

# A smoke set on the second supported Python, 3.13 (`make test-smoke-py313`, run by .ci/run after
# `make test` where a Python 3.13 exists): its own install in .venv313, then the embedded PostgreSQL
# starting (and its system user under a race), the demo seeded, a local load end to end through
# `dataloader dev`, and the CLI. `make python313` prints the Python 3.13 found, or nothing.
PYTHON313 ?= $(call find_python,3.13)
VENV313   := .venv313
STAMP313  := $(VENV313)/.installed
SMOKE_TESTS := tests/e2e/test_embedded_postgres.py tests/e2e/test_local_demo_seed.py tests/e2e/test_e2e_local.py \
	tests/e2e/test_cli_help.py

# The Spark tests on Spark 3.5, the Spark of Databricks Runtime 15.4 LTS (`make test-spark35`, run
# by .ci/run after `make test`): .venv-spark35 holds pyspark[connect] 3.5 (tests/spark35-requirements.txt)
# on Python 3.11, 15.4's Python. pyspark 3.5 ships no Spark Connect server: tests/loader/spark/test_spark_connect.py
# skips there, saying so; the Sail tests run with the 3.5 Connect client.
# Not here: test_pipes_writer_spark_conf.py (under 3.5 a missing conf key raises the Py4JJavaError
# dagster-pipes' own writer catches, so the failure it guards against is Spark 4's) and the Python
# data source of test_spark_one_snapshot_sail.py (Spark 4; it skips under 3.5, saying so).
PYTHON311 ?= $(call find_python,3.11)
VENV35    := .venv-spark35
STAMP35   := $(VENV35)/.installed
SPARK_TESTS := tests/loader/spark/test_spark_on_sail.py tests/loader/spark/test_loader_spark.py \
	tests/loader/spark/test_loader_spark_merge_range.py tests/loader/spark/test_spark_write_counts.py \
	tests/loader/spark/test_spark_exactly_once.py tests/loader/spark/test_spark_deletes_scd2.py \
	tests/loader/spark/test_spark_partitioned_reads.py tests/loader/spark/test_split_dialects.py \
	tests/loader/spark/test_databricks_process.py tests/loader/spark/test_serverless_rules.py tests/loader/spark/test_spark_connect.py \
	tests/loader/spark/test_spark_serverless_merge_sail.py tests/loader/spark/test_spark_exactly_once_sail.py \
	tests/loader/spark/test_column_control_sail.py tests/loader/spark/test_spark_one_snapshot_sail.py \
	tests/loader/spark/test_spark_source_comments.py tests/loader/spark/test_runtime_floor.py \
	tests/loader/spark/test_spark_federation_sail.py

.PHONY: dev test test-py312 test-smoke-py313 test-spark35 python313 bench install clean-local

$(STAMP): pyproject.toml
	@py="$(PYTHON)"; [ -n "$$py" ] && "$$py" $(IS_SUPPORTED) >/dev/null 2>&1 || { \
		echo "No supported Python found: DataLoader needs Python 3.11, 3.12, 3.13 or 3.14."; \
		echo "Looked for python3.11, python3.12, python3.13, python3.14 (on PATH or pyenv's), then python3$${py:+; PYTHON=$$py is not one}."; \
		echo "Install one, or name it: make PYTHON=/path/to/python3.11 $(MAKECMDGOALS)"; exit 1; }
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
	@[ -n "$(PYTHON312)" ] || { echo "python3.12 not found (on PATH or pyenv's); set PYTHON312=/path/to/python3.12"; exit 1; }
	test -x $(VENV312)/bin/python || $(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install --quiet --upgrade pip
	$(VENV312)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP312)

test-py312: $(STAMP312)
	$(VENV312)/bin/python -m pytest $(SCRIPT_TESTS) $(PYTEST_ARGS)

$(STAMP313): pyproject.toml
	@[ -n "$(PYTHON313)" ] || { echo "python3.13 not found (on PATH or pyenv's); set PYTHON313=/path/to/python3.13"; exit 1; }
	test -x $(VENV313)/bin/python || $(PYTHON313) -m venv $(VENV313)
	$(VENV313)/bin/python -m pip install --quiet --upgrade pip
	$(VENV313)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP313)

test-smoke-py313: $(STAMP313)
	$(VENV313)/bin/python -m pytest -n 2 --dist loadfile $(SMOKE_TESTS) $(PYTEST_ARGS)

python313:
	@echo "$(PYTHON313)"

$(STAMP35): pyproject.toml tests/spark35-requirements.txt
	@[ -n "$(PYTHON311)" ] || { echo "python3.11 not found (on PATH or pyenv's); set PYTHON311=/path/to/python3.11"; exit 1; }
	test -x $(VENV35)/bin/python || $(PYTHON311) -m venv $(VENV35)
	$(VENV35)/bin/python -m pip install --quiet --upgrade pip
	$(VENV35)/bin/python -m pip install --quiet -e . -r tests/spark35-requirements.txt
	touch $(STAMP35)

test-spark35: $(STAMP35)
	$(VENV35)/bin/python -m pytest -n 2 --dist loadfile $(SPARK_TESTS) $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean-local:
	rm -rf .dataloader
