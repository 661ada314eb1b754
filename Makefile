# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

# Re-installs only when pyproject.toml changes.
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/python -m sam_engine.engine

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check sam_engine tests benchmarks

bench: install
	$(BIN)/python benchmarks/encoder.py

clean:
	rm -rf $(VENV) outputs
