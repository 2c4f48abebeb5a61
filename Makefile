# Each target sets up .venv itself when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP_QUIET := -q --disable-pip-version-check --no-cache-dir

.PHONY: demo test bench data venv clean lint docs

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing random-teachers and its dependencies into $(VENV) (first time: about a minute)..."
	@$(BIN)/python -m pip install $(PIP_QUIET) -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import torch, torchvision, h5py, xarray, distill" || (echo "error: installation into $(VENV) failed; see the pip output above" >&2; exit 1)
	@touch $@

data:
	@scripts/ensure-data.sh --required

demo: $(STAMP)
	@scripts/ensure-data.sh --required
	$(BIN)/python -m analyses.demo

test: $(STAMP)
	@scripts/ensure-data.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: $(STAMP)
	@scripts/ensure-data.sh --required
	@$(BIN)/python -c "import faiss" 2>/dev/null || $(BIN)/python -m pip install $(PIP_QUIET) -e '.[dev,bench]'
	$(BIN)/python -m bench.run_all

# ruff (lint + format check) and mypy over the packages; configuration in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# the documentation site (mkdocs.yml, docs/) into site/; warnings fail the build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs site
