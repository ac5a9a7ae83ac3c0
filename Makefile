# Two commands do everything on a fresh Debian 12 machine: `make demo` and `make test`.
# Slow first-run work (apt packages, Go builds, the Asterisk image) is cached outside the
# checkout under $(CACHE), so only the first run on a machine pays for it.

SHELL := /bin/bash
CACHE ?= $(or $(TRUNKOP_CACHE),$(HOME)/.cache/asterisk-trunk-operator)
export TRUNKOP_CACHE := $(CACHE)
export PIP_CACHE_DIR := $(CACHE)/pip
VENV := .venv
PY := $(VENV)/bin/python
# containerd + CNI plugins: the real kubelet node (testbed/node/); not started by systemd.
# lua5.1 + lua-cjson: Argo CD's health scripts run in a real Lua 5.1 (tests/packaging).
# stunnel4: TLS in front of the sipp Twilio stand-in for secure trunks (Debian's sipp has none).
# shellcheck: the pod scripts (operator/trunk_operator/pod/scripts/*.sh), in `make lint`.
APT_PACKAGES := podman runc sip-tester debootstrap uidmap containerd containernetworking-plugins perl \
                lua5.1 lua-cjson stunnel4 shellcheck

.PHONY: help deps venv binaries external-secrets image operator-image platform crds chart-crds \
        manifests lint test test-unit test-packaging test-integration test-e2e demo demo-down \
        bench clean

help:
	@echo "make demo       cluster + real node, helm install of the chart, Asterisk pod, Twilio"
	@echo "                stand-in, then a trunk applied with kubectl (needs root)"
	@echo "make demo-down  stop everything make demo started"
	@echo "make test       install what is needed, then lint + unit + integration + e2e tests"
	@echo "make crds       regenerate crds/ from the pydantic models (and the chart's copy)"
	@echo "make manifests  regenerate manifests/ from the Helm chart (helm template)"
	@echo "make operator-image  build localhost/asterisk-trunk-operator:<version> with podman"
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

binaries:  ## etcd, kube-*, kubectl, kubelet, kwok, kwokctl, helm from pinned Go modules
	@bash testbed/build-binaries.sh >/dev/null

external-secrets:  ## ESO's controller for its e2e test (first time ~9 min, 4.6 GB of Go cache)
	@bash testbed/build-external-secrets.sh >/dev/null

image: deps  ## localhost/asterisk:22 from Debian sid's asterisk package
	@bash testbed/asterisk/build-image.sh

operator-image: deps  ## localhost/asterisk-trunk-operator:<version>, on a debootstrap'd base
	@bash testbed/build-operator-image.sh

platform: deps venv binaries image

crds: venv
	$(PY) -m trunk_operator.core.crdgen crds
	$(PY) -m tools.chartgen crds

chart-crds: venv  ## the chart's templates/crds.yaml from crds/
	$(PY) -m tools.chartgen crds

manifests: venv binaries chart-crds  ## manifests/ = helm template of the chart (needs helm)
	$(PY) -m tools.chartgen manifests

LINT_PATHS := operator tests testbed tools $(wildcard bench)

lint: venv deps
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check operator tests tools $(wildcard bench)
	$(VENV)/bin/mypy operator/trunk_operator
	$(VENV)/bin/lint-imports  # the layers contract: .importlinter
	shellcheck --shell=sh operator/trunk_operator/pod/scripts/*.sh
	$(VENV)/bin/mypy tests testbed tools $(wildcard bench)

test-unit: venv
	$(VENV)/bin/pytest tests/unit

test-packaging: venv binaries  ## the chart and manifests/ (helm only, no cluster)
	$(VENV)/bin/pytest tests/packaging

test-integration: platform
	$(VENV)/bin/pytest tests/integration tests/platform -m "integration"

test-e2e: platform external-secrets
	$(VENV)/bin/pytest tests/e2e tests/platform -m "e2e"

test: platform external-secrets lint
	$(VENV)/bin/pytest tests

# The real node (containerd + kubelet) runs the operator image and localhost/asterisk:22.
demo: platform operator-image
	$(PY) -m testbed.demo up

demo-down: venv
	$(PY) -m testbed.demo down

bench: platform
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
