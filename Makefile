# drywall-qa: `make demo` and `make test` set up .venv on a fresh machine, then run.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test unit lint format bench clean

$(STAMP): pyproject.toml infra/fetch-docs-assets.sh infra/ensure-postgres.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing drywall-qa into $(VENV) (first time: ~2 min; torch is pinned to the CPU build 2.13.0)"
	@set -o pipefail; $(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 \
		| { grep -v "is ignored: it is neither a file nor a directory" || true; }
	@bash infra/fetch-docs-assets.sh $(VENV)/share/drywall-docs
	@bash infra/ensure-postgres.sh
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/drywall demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest tests/unit

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m bench.masks
	$(PY) -m bench.train_epoch
	$(PY) -m bench.predict
	$(PY) -m bench.drift
	$(PY) -m bench.shared_cache
	$(PY) -m bench.scale --quick

clean:
	rm -rf .drywall .pytest_cache .ruff_cache
