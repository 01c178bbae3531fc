# Each target does its own set-up on a fresh machine: venv, the locked packages (CPU torch 2.13.0 among
# them), the package itself, the data. Every version installed is pinned: requirements.lock (hashes
# included) for Python packages, PIP_VERSION for pip, FASHION_DEB for the Debian data package.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
PIP_VERSION := 26.3
PIP_TOOLS   := pip-tools==7.6.2
LOCKENV     := .venv-lock
FASHION_DEB := dataset-fashion-mnist=0.0~git20200523.55506a9-1

.PHONY: setup data run test test-matrix lint bench lock clean

# The lock holds every dependency (torch's CPU wheel, setuptools to build unigrad) with its hashes, so
# pip installs exactly it (--no-deps: nothing is resolved anew), then unigrad itself. One locked package,
# afinn, comes only as a source archive; pip would build it in an isolated environment with whatever
# setuptools and wheel are newest, unpinned. So the locked setuptools (its lines from the lock, hashes
# included) goes in first, and everything, afinn and unigrad among it, is built with it, without build
# isolation.
SETUPTOOLS_LOCK := $(VENV)/setuptools.lock
$(STAMP): $(LOCK) pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "$(LOCK) is for Python 3.11; run make with PYTHON=python3.11")'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q pip==$(PIP_VERSION)
	awk '/^setuptools==/ {on = 1} on {print} on && !/\\$$/ {exit} END {exit !on}' $(LOCK) > $(SETUPTOOLS_LOCK)
	$(BIN)/pip install -q --no-deps --require-hashes -r $(SETUPTOOLS_LOCK)
	$(BIN)/pip install -q --no-deps --require-hashes --no-build-isolation -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

setup: $(STAMP) data

# Fashion-MNIST comes from Debian's package (installed when we are root and apt is there).
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq $(FASHION_DEB); \
	  else echo "note: Fashion-MNIST absent; install it with: sudo apt-get install -y $(FASHION_DEB)"; fi; \
	fi

run: setup
	$(BIN)/unigrad compare

test: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest -n 2 -q

# The suite on four configurations (docs/reproducibility.md): torch with 1 and 2 threads, each with this
# CPU's own kernels and with those of an AVX2-only CPU (torch, MKL, oneDNN, numpy and OpenBLAS told not
# to use AVX-512). About four times `make test`.
AVX2 := ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell \
        NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"
test-matrix: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q -p no:cacheprovider
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -n 2 -q -p no:cacheprovider
	$(AVX2) OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q -p no:cacheprovider
	$(AVX2) OMP_NUM_THREADS=2 $(BIN)/python -m pytest -n 2 -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

bench: setup
	$(BIN)/python benchmarks/p1_step_time.py
	$(BIN)/python benchmarks/p2_memory.py

# Refresh the lock from pyproject.toml's ranges. It keeps every pin that still satisfies them, so on an
# unchanged tree it rewrites the same file; `make lock UPGRADE=1` moves everything to the newest
# versions the ranges allow, `make lock UPGRADE=numpy` just that package. Needs the CPU torch wheel
# where pip can find it (a --find-links folder or PyTorch's CPU index in pip's configuration).
lock:
	test -d $(LOCKENV) || $(PYTHON) -m venv $(LOCKENV)
	$(LOCKENV)/bin/pip install -q pip==$(PIP_VERSION) $(PIP_TOOLS)
	$(LOCKENV)/bin/pip-compile -q --extra dev --extra peers --extra finetune --extra tensorboard --extra mlflow --extra lightning --all-build-deps --allow-unsafe --strip-extras \
	  --generate-hashes --no-emit-index-url --no-emit-find-links --newline LF \
	  $(if $(filter 1,$(UPGRADE)),--upgrade,$(if $(UPGRADE),--upgrade-package $(UPGRADE))) \
	  --output-file $(LOCK) pyproject.toml

clean:
	rm -rf $(VENV) $(LOCKENV) runs .pytest_cache
