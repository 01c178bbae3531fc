# Each target does its own set-up on a fresh machine: venv, pinned CPU torch, the package, the data.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup data run test lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,peers]' torch==2.13.0
	touch $(STAMP)

setup: $(STAMP) data

# Fashion-MNIST comes from Debian's package (installed when we are root and apt is there).
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "note: Fashion-MNIST absent; install it with: sudo apt-get install -y dataset-fashion-mnist"; fi; \
	fi

run: setup
	$(BIN)/unigrad compare

test: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

bench: setup
	$(BIN)/python benchmarks/p1_step_time.py
	$(BIN)/python benchmarks/p2_memory.py

clean:
	rm -rf $(VENV) runs .pytest_cache
