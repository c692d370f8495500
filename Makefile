# serverless-comfyui: the two commands a newcomer needs are `make up` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCK := operator/uv.lock
IMAGE_LOCK := operator/requirements.lock
UV_DIR := .tools/uv
UV := $(UV_DIR)/bin/uv
STAMP := $(VENV)/.installed-$(shell cat operator/pyproject.toml $(LOCK) | sha1sum | cut -c1-12)
# uv uses the machine's Python (never downloads one) and fills .venv at the repository root.
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
TOOL_MODULES := $(wildcard tools/*/go.mod tools/*/go.sum)
TOOLS_STAMP := .tools/bin/.built-$(shell cat $(TOOL_MODULES) scripts/build-tools.sh | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help venv lock comfyui-env tools containers redis chromium lint fmt test test-unit test-integration up down clean images bench e2e e2e-kind

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(UV): scripts/uv-requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python >= 3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(UV_DIR)
	$(UV_DIR)/bin/pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r scripts/uv-requirements.txt
	@touch $@

# The lock must match operator/pyproject.toml (uv checks the declared requirements, not file
# dates); `uv sync --locked` then installs exactly the lock, every file checked against its hash.
$(STAMP): operator/pyproject.toml $(LOCK) $(UV)
	@$(UV) lock --project operator --check --quiet || { \
	  echo "error: $(LOCK) is out of date with operator/pyproject.toml: run 'make lock'" >&2; exit 1; }
	$(UV) sync --project operator --locked --extra dev --quiet
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP) ## create .venv from the hashed lock (operator/uv.lock)

lock: $(UV) ## re-resolve the Python locks after editing operator/pyproject.toml or images/comfyui/requirements.in
	$(UV) lock --project operator
	$(UV) export --project operator --frozen --no-emit-project --quiet -o $(IMAGE_LOCK)
	cd images/comfyui && ../../$(UV) pip compile --quiet --universal --generate-hashes \
	  --python-version 3.11 requirements.in ../../operator/pyproject.toml -o requirements.lock

comfyui-env: venv ## the real ComfyUI (source + locked torch environment) for the test world, in .tools/comfyui
	bash scripts/build-comfyui-env.sh

$(TOOLS_STAMP): $(TOOL_MODULES) scripts/build-tools.sh
	bash scripts/build-tools.sh
	@rm -f .tools/bin/.built-*; touch $@

tools: $(TOOLS_STAMP) ## build etcd, kube-*, kubectl, kwok, helm from Go modules into .tools/bin

containers: ## make podman, buildah, runc, containerd, the CNI plugins and busybox available (Debian packages)
	bash scripts/ensure-container-tools.sh
	bash scripts/ensure-busybox.sh

redis: ## make redis-server available (the generation API's store is tested against a real one)
	bash scripts/ensure-redis.sh

chromium: ## make a headless chromium available (the web UI test opens ComfyUI's editor in it)
	bash scripts/ensure-chromium.sh

lint: venv ## ruff (lint + format check), mypy and hadolint (Dockerfiles)
	$(VENV)/bin/ruff check operator/src tests
	$(VENV)/bin/ruff format --check operator/src tests
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint images/*/Dockerfile

fmt: venv ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix operator/src tests
	$(VENV)/bin/ruff format operator/src tests

test: tools venv redis containers chromium comfyui-env images lint ## lint, then all tests (unit + integration on a real control plane)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv redis ## unit tests only (no control plane, no images, no real ComfyUI)
	$(PY) -m pytest -m 'not cluster and not images and not comfyui' $(PYTEST_ARGS)

test-integration: tools venv redis containers chromium comfyui-env ## integration tests on the real control plane
	$(PY) -m pytest -m cluster $(PYTEST_ARGS)

REAL ?=
# REAL=1: the chart on a real kubelet node with the images `make images` built (real ComfyUI).
UP_DEPS := tools venv $(if $(REAL),containers images)
up: $(UP_DEPS) ## run the local test world (control plane, fake GPU nodes, emulated ComfyUI pods; REAL=1: the real images on a real node)
	$(PY) -m serverless_comfyui.testworld up --state-dir .local $(if $(REAL),--real)

e2e: tools venv containers images ## the chart on the test world's real node: helm, the built images, real ComfyUI on CPU (part of `make test`)
	$(PY) -m pytest tests/integration/test_real_node_chart.py $(PYTEST_ARGS)

down: ## stop everything `make up` started
	@if [ -x $(PY) ]; then $(PY) -m serverless_comfyui.testworld down --state-dir .local; else echo "nothing to stop"; fi

bench: tools venv ## benchmarks, each against a baseline measured in the same run (BENCH_ARGS='--runs 1')
	$(PY) -m serverless_comfyui.bench $(BENCH_ARGS)

e2e-kind: ## the chart on a kind cluster with real images (needs Docker and kind; not run in CI)
	bash scripts/e2e-kind.sh

IMAGES ?=
images: ## build the container images (docker buildx, else podman; cached by inputs; see images/README.md)
	bash images/build.sh $(IMAGES)

clean: down ## remove the virtualenv, the local state and the tool links (not the per-user tool cache)
	rm -rf $(VENV) .local .tools .pytest_cache .mypy_cache .ruff_cache
