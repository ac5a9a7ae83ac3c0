# Two commands do everything on a fresh Debian 12 machine: `make demo` and `make test`.
# Slow first-run work (apt packages, Go builds, the Asterisk image) is cached outside the
# checkout under $(CACHE), so only the first run on a machine pays for it.

SHELL := /bin/bash
CACHE ?= $(or $(TRUNKOP_CACHE),$(HOME)/.cache/asterisk-trunk-operator)
export TRUNKOP_CACHE := $(CACHE)
export PIP_CACHE_DIR := $(CACHE)/pip
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := podman runc sip-tester debootstrap uidmap

.PHONY: help deps venv binaries image platform crds lint test test-unit test-integration \
        test-e2e demo demo-down bench clean

help:
	@echo "make demo       bring up cluster + Asterisk + Twilio stand-in + operator, apply a trunk"
	@echo "make demo-down  stop everything make demo started"
	@echo "make test       install what is needed, then lint + unit + integration + e2e tests"
	@echo "make crds       regenerate crds/ from the pydantic models"
	@echo "make bench      run the benchmarks (prints figures)"

deps:  ## Debian packages the platform needs (idempotent; quiet when present)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

binaries:  ## etcd, kube-*, kubectl, kwok, kwokctl, helm from pinned Go modules
	@bash testbed/build-binaries.sh >/dev/null

image: deps  ## localhost/asterisk:22 from Debian sid's asterisk package
	@bash testbed/asterisk/build-image.sh

platform: deps venv binaries image

crds: venv
	$(PY) -m trunk_operator.crdgen crds

LINT_PATHS := operator tests testbed $(wildcard bench)

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check operator tests $(wildcard bench)
	$(VENV)/bin/mypy operator/trunk_operator

test-unit: venv
	$(VENV)/bin/pytest tests/unit

test-integration: platform
	$(VENV)/bin/pytest tests/integration tests/platform -m "integration"

test-e2e: platform
	$(VENV)/bin/pytest tests/e2e tests/platform -m "e2e"

test: platform lint
	$(VENV)/bin/pytest tests

demo: platform
	$(PY) -m testbed.demo up

demo-down: venv
	$(PY) -m testbed.demo down

bench: platform
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
