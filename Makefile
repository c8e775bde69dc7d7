# `make run`: set up and train on the embedded Digits-LD default. `make test`: set up and run the tests.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
OUTPUT_DIR ?= runs/digits-ld-mus
STAMP := $(VENV)/.installed

.PHONY: setup run test test-slow test-all lint format docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,tracking]"  # tracking: the --report_to tensorboard test
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/train_mrl.py --output_dir $(OUTPUT_DIR)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check hf_mrl recipes tests benchmarks
	$(VENV)/bin/ruff format --check hf_mrl recipes tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format hf_mrl recipes tests benchmarks
	$(VENV)/bin/ruff check --fix hf_mrl recipes tests benchmarks

DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)  # strict: a broken link, a page left out of the nav or an API name that does not import fails
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache site
