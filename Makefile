# Hush — run `make help` for the targets. CI runs `make test` (via .ci/run) and nothing else.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON_BOOTSTRAP ?= python3
VENV := .venv
BIN := $(VENV)/bin
HUSH := $(BIN)/hush
# The cluster `make test` and `make demo` use; `hush dev up` defaults to hush-dev.
TEST_CLUSTER ?= hush-test
DEMO_CLUSTER ?= hush-dev
PYTEST_FLAGS ?=

##@ General

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
	  /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create .venv with Hush and its dev tools (idempotent)

.PHONY: report-tools
report-tools: ## Debian packages of hush report's tests: Pango, poppler-utils, chromium (as root)
	hack/report-tools.sh

.PHONY: controlplane
controlplane: ## Build etcd, kube-*, kubectl, kwok and helm from the pinned Go modules (cached)
	hack/controlplane/build.sh

.PHONY: manifests
manifests: venv ## Regenerate crds/ and the chart's generated templates (CRDs, webhooks, policies)
	$(HUSH) manifests crds --chart-templates charts/hush/templates

.PHONY: lint
lint: venv ## ruff, ruff format --check, mypy --strict, import-linter
	$(BIN)/ruff check operator tests e2e
	$(BIN)/ruff format --check operator tests e2e
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: format
format: venv ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix operator tests e2e
	$(BIN)/ruff format operator tests e2e

##@ Testing

.PHONY: unit
unit: venv controlplane report-tools ## Unit tests (no cluster; the chart tests run the built helm)
	$(BIN)/pytest tests $(PYTEST_FLAGS)

.PHONY: e2e
e2e: venv controlplane report-tools ## e2e tests on a fresh local control plane (torn down afterwards)
	@status=0; \
	HUSH_DEV_CLUSTER=$(TEST_CLUSTER) $(BIN)/pytest e2e $(PYTEST_FLAGS) || status=$$?; \
	$(HUSH) dev down --name $(TEST_CLUSTER) || true; \
	exit $$status

.PHONY: e2e-kind
e2e-kind: venv ## Build the image, load it into kind, helm install it, run the e2e suite (needs Docker, kind, helm)
	PYTEST_FLAGS='$(PYTEST_FLAGS)' hack/e2e-kind.sh

# The real-node e2e (docs/design/0020-real-nodes.md): containerd, a kubelet, the registry on
# 127.0.0.1, images built here, the chart on real pods. Root on Linux; one real node per machine,
# so the files run one after another, each with its own cluster. Not part of `make test` yet.
REAL_NODE_TESTS ?= $(sort $(wildcard e2e/test_real_*.py))

.PHONY: e2e-real-node
e2e-real-node: venv controlplane ## e2e on a real node: pods that run, the image built here, the chart installed by digest (root)
	HUSH_REAL_NODE=1 $(BIN)/pytest $(REAL_NODE_TESTS) $(PYTEST_FLAGS)

.PHONY: test
test: lint unit e2e ## Everything: lint, unit tests, e2e tests on the local control plane

.PHONY: bench
bench: venv controlplane ## Benchmarks: samplers, accountants, sidecar vs nginx, admission, the accountant on a cluster
	$(BIN)/python bench/bench_samplers.py
	$(BIN)/python bench/bench_accounting.py
	$(BIN)/python bench/bench_sampler_timing.py
	$(BIN)/python bench/bench_sidecar.py
	$(BIN)/python bench/bench_admission.py handler
	@status=0; \
	kubeconfig="$$($(HUSH) dev up --name hush-bench --no-hush | tail -n 1)"; \
	$(BIN)/python bench/bench_admission.py apiserver --kubeconfig "$$kubeconfig" || status=$$?; \
	$(BIN)/python bench/bench_accountant.py --kubeconfig "$$kubeconfig" || status=$$?; \
	$(HUSH) dev down --name hush-bench || true; \
	exit $$status

##@ Local cluster

.PHONY: cluster-up
cluster-up: venv controlplane ## Start the local control plane with Hush (prints the kubeconfig path last)
	$(HUSH) dev up --name $(DEMO_CLUSTER)

.PHONY: cluster-down
cluster-down: venv ## Stop the local control plane and remove its state
	$(HUSH) dev down --name $(DEMO_CLUSTER)

.PHONY: cluster-status
cluster-status: venv ## Show what runs in the local control plane
	$(HUSH) dev status --name $(DEMO_CLUSTER)

.PHONY: demo
demo: venv controlplane ## The Hush story on the local cluster with real objects (the cluster stays up)
	hack/demo.sh $(DEMO_CLUSTER)

##@ Image and CI

IMAGE ?= hush:dev
SHELLCHECK ?= shellcheck

.PHONY: image
image: ## Build the container image (IMAGE=hush:dev; needs Docker with BuildKit)
	docker build --tag $(IMAGE) --build-arg REVISION="$$(git rev-parse HEAD)" .

.PHONY: image-test
image-test: venv ## The image's install steps in a fresh venv, and its Dockerfile checks (no Docker)
	$(BIN)/pytest tests/image $(PYTEST_FLAGS)

.PHONY: image-lock
image-lock: ## Re-lock the image's dependencies with hashes from pyproject.toml (needs PyPI)
	hack/image-lock.sh

.PHONY: image-pin
image-pin: ## Pin the Dockerfile's base image to its tag's current digest (needs Docker Hub)
	hack/image-pin.sh

.PHONY: chart-check
chart-check: ## helm lint --strict and helm template over the chart's main value sets
	hack/chart-check.sh

.PHONY: lint-shell
lint-shell: ## shellcheck every script (warnings and errors)
	$(SHELLCHECK) --severity=warning hack/*.sh hack/controlplane/*.sh .ci/run
