# aiplane developer targets. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PACKAGES := aiplane crds engine api operators connectors policies planners

.PHONY: help setup dev demo test test-unit lint format typecheck generate check cluster-up cluster-down kafka-up kafka-down bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: ## install system packages, Python deps and test tools (idempotent)
	bash hack/setup.sh

dev: ## run the embedded default (aiplane dev): gateway, workers, SQLite and the example's model
	$(VENV)/bin/aiplane dev

demo: ## the claims-triage case end to end on the embedded default (aiplane demo)
	$(VENV)/bin/aiplane demo

test: ## run the whole suite: unit and integration (starts the test cluster, Kafka, PostgreSQL)
	$(PY) -m pytest

test-unit: ## run the fast unit tests only (no external components)
	$(PY) -m pytest -m "not integration"

lint: ## ruff lint + format check, import-linter contracts, CRD drift
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m crds.generate --check
	$(PY) helm/generate.py --check
	$(PY) -m aiplane.apidocs --check

format: ## apply ruff formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: ## mypy --strict over every package, the tests and the examples
	$(VENV)/bin/mypy $(PACKAGES) tests benchmarks examples/claims-triage/model helm/generate.py

generate: ## regenerate crds/*.yaml from the pydantic models, the chart's CRDs and dashboards, the HTTP API reference
	$(PY) -m crds.generate
	$(PY) helm/generate.py
	$(PY) -m aiplane.apidocs

check: lint typecheck test ## lint + typecheck + test

cluster-up: ## start the test cluster (etcd, apiserver, controller-manager, scheduler, kwok nodes)
	bash hack/cluster.sh up

cluster-down: ## stop the test cluster
	bash hack/cluster.sh down

kafka-up: ## start the test Kafka broker (KRaft)
	bash hack/kafka.sh up

kafka-down: ## stop the test Kafka broker
	bash hack/kafka.sh down

bench: ## run the benchmarks (prints ratios against a baseline measured in the same run)
	$(PY) -m benchmarks
