# The two commands a newcomer runs: `make demo` and `make test`.  `make bench` runs the benchmarks.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := iptables nftables iproute2 wrk nginx-light nghttp2-client curl

.PHONY: demo test bench lint typecheck clean system-deps install install-test

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --no-warn-script-location -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --no-warn-script-location -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# System packages for e2e tests and benchmarks: installed when we are root, otherwise checked.
system-deps:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else echo "not root: skipping apt packages ($(APT_PACKAGES))"; fi

demo: install
	$(BIN)/python -m examples.demo

test: system-deps install-test
	$(BIN)/ruff check sidecar init tests benchmarks examples
	$(BIN)/mypy sidecar
	$(BIN)/python -m pytest -n 2 -q

lint: install-test
	$(BIN)/ruff check sidecar init tests benchmarks examples
	$(BIN)/mypy sidecar

bench: system-deps install-test
	$(BIN)/python -m benchmarks.run

# The xDS acceptance numbers (10,000 EDS clusters, update latency, 1,000 updates), envoy vs the sidecar.
.PHONY: bench-xds
bench-xds: install-test
	$(BIN)/python -m benchmarks.xds_scale --clusters 10000 --concurrency 2

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis
