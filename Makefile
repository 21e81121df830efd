# dermsearch: `make demo` and `make test` work on a fresh machine (they create .venv themselves).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned exactly: the CPU build (an unpinned torch would pull a CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf demo-output
	$(BIN)/dermsearch index examples/isic-sample/labels.csv --index demo-output/index
	$(BIN)/dermsearch search demo-output/index examples/queries/ISIC_0000022.jpg -k 5 \
		--html demo-output/results.html

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples experiments
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/bench_index.py
	$(BIN)/python benchmarks/bench_search.py

clean:
	rm -rf $(VENV) demo-output
