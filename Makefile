# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing and reuses it when present.
# torch is installed first, pinned to 2.13.*: an unpinned torch makes pip pull
# a multi-GB CUDA build on a CPU-only machine (a GPU user gets the CUDA build
# of the same version from PyPI).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.*

.PHONY: demo test test-fast lint install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,ray]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medseg demo --out demo_out

lint: $(STAMP)
	$(VENV)/bin/ruff check medseg tests benchmarks

# The full suite includes the wheel smoke test (tests/integration/test_wheel_install.py):
# the built wheel installed in a fresh venv runs the demo, a pipeline by name and a label table by name.
test: $(STAMP) lint
	$(PY) -m pytest -q

test-fast: $(STAMP) lint
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf demo_out .pytest_cache
