# The two commands of the README: `make demo` and `make test`.
# Both create (or reuse) the virtual environment .venv and install the project into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
# Installed before the project so that its range is already satisfied: on this CPU-only
# machine the pin takes the local CPU build; on a GPU cluster the same line takes the CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint clean-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[workflow,test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml

test: setup
	$(BIN)/python -m pytest -q -rs

lint: setup
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint --configfile config/demo.yaml

clean-demo:
	rm -rf results .snakemake
