# drywall-qa: `make demo` and `make test` set up .venv on a fresh machine, then run.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test unit lint format bench clean lock

$(STAMP): pyproject.toml requirements.lock infra/fetch-docs-assets.sh infra/ensure-package.sh infra/ensure-postgres.sh infra/ensure-chromium.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing drywall-qa into $(VENV) from requirements.lock (first time: ~2.5 min; torch is the CPU build 2.13.0)"
	@set -o pipefail; $(PY) -m pip install --disable-pip-version-check --progress-bar off -c requirements.lock -e '.[dev]' 2>&1 \
		| awk '/is ignored: it is neither a file nor a directory|^Requirement already satisfied|^  (Using cached|Downloading|Obtaining|Preparing|Getting|Installing build|Building|Created|Stored|Attempting|Found existing|Uninstalling|Successfully uninstalled)/{next} \
		       /^(Collecting|Processing|Obtaining|Downloading) /{n++; if (n % 25 == 0) {print "  " n " packages resolved"; fflush()}; next} \
		       /^Installing collected packages/{print "  installing " n " packages"; fflush(); next} \
		       /^Successfully installed/{print "  installed"; next} {print; fflush()}'
	@bash infra/fetch-docs-assets.sh $(VENV)/share/drywall-docs
	@bash infra/ensure-postgres.sh
	@bash infra/ensure-chromium.sh
	@touch $(STAMP)

setup: $(STAMP)

# re-resolve pyproject.toml afresh and pin every transitive dependency (see infra/lock.sh)
lock:
	bash infra/lock.sh

demo: setup
	$(VENV)/bin/drywall demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# three xdist workers on 2 cores: much of the suite waits on servers, schedules and subprocesses
TEST_WORKERS ?= 3

test: setup lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist load --durations=25

# the inner loop: tests/unit without the few marked slow (`make test` runs those too)
unit: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist load tests/unit -m 'not slow' --durations=10

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m bench.masks
	$(PY) -m bench.train_epoch
	$(PY) -m bench.predict
	$(PY) -m bench.drift
	$(PY) -m bench.shared_cache
	$(PY) -m bench.serve
	$(PY) -m bench.scale --quick
	$(PY) -m bench.measure
	$(PY) -m bench.field
	$(PY) -m bench.label_diversity
# longer, run on their own: bench.drift_power (~45 min the first time), bench.quality --model MODEL (~18 min)

clean:
	rm -rf .drywall .pytest_cache .ruff_cache
