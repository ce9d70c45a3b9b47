# The two README commands: `make serve` (main job) and `make test`. Both set everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python
SW := $(VENV)/bin/stancewatch
HOST ?= 127.0.0.1
PORT ?= 3000
export BENTOML_DO_NOT_TRACK := True
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup serve test test-fast lint corpus

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: this is the CPU build; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[train,ray,test]"
	touch $@

setup: $(VENV)/.installed

# Train the default model if the store ($$BENTOML_HOME, default ~/bentoml) has none, then serve.
serve: setup
	$(SW) init
	$(SW) serve --host $(HOST) --port $(PORT)

# Lint and format check first (seconds), then the suite.
test: setup lint
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-fast: setup
	$(PY) -m pytest -m "not slow"

# Rebuild the news-genre CSVs from the hand-written articles and the adjudicated labels.
corpus: setup
	$(PY) -m stancewatch.training.corpus build training/data/news_train.csv training/data/articles/train/*.txt --decisions docs/annotation/decisions/*.tsv
	$(PY) -m stancewatch.training.corpus build training/data/news_test.csv training/data/articles/test/*.txt --decisions docs/annotation/decisions/*.tsv
