# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo test lint bench clean

# Re-installs only when pyproject.toml changes.
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The web annotator's browser test drives Debian's Chromium: installed with apt-get where missing (as root).
BROWSER_PACKAGES := chromium chromium-driver
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q $(BROWSER_PACKAGES) >/dev/null || \
	      { apt-get update -q >/dev/null && apt-get install -y -q $(BROWSER_PACKAGES) >/dev/null; }; \
	  else \
	    echo "make: chromium missing and not root: the browser tests skip (apt-get install $(BROWSER_PACKAGES))"; \
	  fi; \
	fi

demo: install
	$(BIN)/python -m sam_engine.engine

# The 30 slowest tests are listed at the end: where the suite's time goes (its budget: 20 minutes on 2 cores).
test: install browser
	$(BIN)/python -m pytest -q --durations=30

lint: install
	$(BIN)/ruff check sam_engine tests benchmarks

bench: install
	$(BIN)/python benchmarks/encoder.py

clean:
	rm -rf $(VENV) outputs
