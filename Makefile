# The whole developer workflow. Everything installs into .venv from a bare clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-unit test-integration lint bench faults clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/miniflow run examples/csv_report.yaml --steps examples.steps --db sqlite:///.miniflow-demo.db

test: install
	$(BIN)/pytest tests --durations=10

test-unit: install
	$(BIN)/pytest tests --ignore=tests/integration

test-integration: install
	$(BIN)/pytest tests/integration

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .miniflow-demo.db build *.egg-info

faults: install
	rm -f reports/faults.json
	$(BIN)/pytest tests/integration/test_fault_matrix.py tests/integration/test_partition.py \
		tests/integration/test_faults.py
	$(BIN)/python -m tests.integration.faults_report

bench: install
	$(BIN)/python -m bench.run
