# fuse4seg: `make demo` runs the whole pipeline on phantom data, `make test` runs the test suite.
# Both create .venv and install everything the project needs; nothing else is required.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest workers: the suite is sized for 2 cores.
JOBS ?= 2

.PHONY: install demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: it resolves to the local CPU build, so the range in setup.cfg installs nothing more.
# panoptica (Apache-2.0), the tests' reference for the brats2025 scoring convention, goes in without its pins
# (numpy<2.3, pandas<3, rich<14 would downgrade the environment); its other needs come with .[dev].
$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "panoptica==2.1.7" "connected-components-3d>=3.12" "plotly>=5"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fuse4seg demo --out runs/demo --overwrite

# One BLAS/OpenMP thread per pytest worker: oversubscribed threads made small convolutions 100x slower.
test: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(JOBS) -q

lint: $(STAMP)
	$(VENV)/bin/ruff check fuse4seg tests benchmarks tools

bench: $(STAMP)
	$(PY) benchmarks/build.py
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/hypergrad.py
	$(PY) benchmarks/train.py

clean:
	rm -rf $(VENV) runs .pytest_cache
