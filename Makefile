# dermsearch: `make demo` and `make test` work on a fresh machine (they create .venv themselves).
# After `make demo`, `. .venv/bin/activate` puts the `dermsearch` command on PATH for the README's tour.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
# torch's CPU build comes from PyTorch's CPU index (the pin alone picks the CUDA build on Linux);
# `make demo TORCH_INDEX=https://pypi.org/simple` installs the CUDA build instead
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test test-fast lint bench clean

# torch first, pinned exactly, from TORCH_INDEX; later installs keep it (the pin is satisfied)
# (when TORCH_INDEX does not answer within 10 s, as on a machine that reaches only PyPI or a mirror,
# pip's own configuration is used instead: a local CPU wheel or the mirror's torch)
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	if $(PYTHON) -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)" \
			"$(TORCH_INDEX)/" >/dev/null 2>&1; then \
		$(BIN)/pip install --quiet $(TORCH) --index-url $(TORCH_INDEX); \
	else \
		echo "$(TORCH_INDEX) does not answer: $(TORCH) from pip's configured index instead"; \
		$(BIN)/pip install --quiet $(TORCH); \
	fi

# the demo needs the core and the ONNX export (the default, faster CPU backend)
$(VENV)/.demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH) -e '.[onnx]'
	touch $@

# the tests need every extra
$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH) -e '.[all,test]'
	touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	rm -rf demo-output
	$(BIN)/dermsearch index examples/isic-sample/labels.csv --index demo-output/index
	$(BIN)/dermsearch optimize demo-output/index
	$(BIN)/dermsearch search demo-output/index examples/queries/ISIC_0000022.jpg -k 5 \
		--html demo-output/results.html
	@echo "next: . .venv/bin/activate (puts dermsearch on PATH), then the tour in README.md"

lint: $(VENV)/.test
	$(BIN)/ruff check src tests benchmarks examples experiments

test: lint
	$(BIN)/python -m pytest

# everything but the tests marked slow (real models on real images, browsers, crash runs)
test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

bench: $(VENV)/.test
	$(BIN)/pip install --quiet $(TORCH) -e '.[all,test,bench]'
	$(BIN)/python benchmarks/bench_index.py
	$(BIN)/python benchmarks/bench_search.py

clean:
	rm -rf $(VENV) demo-output
