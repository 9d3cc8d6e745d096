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
# nnunetv2 for tests/external (medseg compared with nnU-Net's own predictor). It is installed
# without its dependencies because its chain (dynamic-network-architectures -> timm -> torchvision)
# would replace the pinned torch; NNUNET_DEPS are the ones it imports, none of which touches torch.
NNUNET      := nnunetv2>=2.5,<3 dynamic-network-architectures>=0.4
NNUNET_DEPS := acvl-utils batchgenerators batchgeneratorsv2 blosc2 einops graphviz imagecodecs \
               scikit-image scikit-learn seaborn tifffile yacs connected-components-3d

.PHONY: demo test test-fast lint install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,ray,pacs]"
	$(PY) -m pip install --quiet --no-deps $(foreach p,$(NNUNET),"$(p)")
	$(PY) -m pip install --quiet $(NNUNET_DEPS)
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medseg demo --out demo_out

# lint-imports checks the layering written in .importlinter (the architecture's contracts); mypy checks the
# modules whose types the rest builds on (pyproject.toml [tool.mypy]). pre-commit runs the same (.pre-commit-config.yaml).
lint: $(STAMP)
	$(VENV)/bin/ruff check medseg tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# The full suite includes the wheel smoke test (tests/integration/test_wheel_install.py):
# the built wheel installed in a fresh venv runs the demo, a pipeline by name and a label table by name.
test: $(STAMP) lint
	$(PY) -m pytest -q

test-fast: $(STAMP) lint
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf demo_out .pytest_cache
