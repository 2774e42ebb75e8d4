# scorelab — `make demo` and `make test` each set up .venv by themselves (torch 2.13.0 CPU first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.scorelab-installed
PYTEST_ARGS ?=
# mkdocs 1.x prints a banner about its successor on every build; it is not a warning of this project's docs.
export NO_MKDOCS_2_WARNING ?= 1
# One intra-op thread: the nets here are small, and two threads thrash when anything else shares the 2 cores.
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo test test-slow bench lint docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,docs,diffusers]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/scorelab demo

# Default suite (slow tests excluded). pytest exit 5 = no test collected: that is an error here, said loudly.
# Then the docs site, built strictly, so a broken reference or a page missing from the nav fails CI.
test: $(STAMP)
	@$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests (exit 5): the suite did not run" >&2; exit 1; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi
	$(BIN)/mkdocs build --strict

# The docs site (mkdocs + material + mkdocstrings) into site/; --strict turns every warning into a failure.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# Slow tests only. Exit 5 (none marked slow) is reported as such and kept as exit 5: neither success nor failure.
test-slow: $(STAMP)
	@$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "NOTE: no tests are marked slow (pytest exit 5): nothing ran" >&2; fi; \
	exit $$rc

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/samplers.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf runs site .pytest_cache .ruff_cache
