# stopline — `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
K8S_VERSION ?= 1.34.4
ETCD_VERSION ?= 3.6.16
STOPLINE_TESTENV ?= $(HOME)/.cache/stopline/testenv/$(K8S_VERSION)-etcd$(ETCD_VERSION)
export K8S_VERSION ETCD_VERSION STOPLINE_TESTENV
PYTEST := $(PY) -m pytest
# run one marked tier of tests/; a tier that has no test files yet says so instead of failing
tier = if compgen -G 'tests/$(1)/test_*.py' >/dev/null; then $(PYTEST) -m $(1) tests/$(1); else echo "$(1): no tests yet"; fi

.PHONY: help venv testenv test test-unit test-trainer test-cluster e2e lint helm-lint demo images kind-up kind-down kind-e2e deploy undeploy

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(PY): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,trainer,s3]'
	touch $(PY)

venv: $(PY) ## create .venv with the project and its dev, trainer and s3 extras

testenv: ## build kube-apiserver, kube-controller-manager, kubectl, etcd and helm into $(STOPLINE_TESTENV) (cached)
	bash tests/testenv/build.sh

test: lint test-unit test-trainer test-cluster e2e ## everything CI runs: lint, unit, trainer, cluster and e2e tests

test-unit: $(PY) ## pure tests, no processes
	$(PYTEST) tests/unit

test-trainer: $(PY) testenv ## real trainer processes with real torch, checkpoints to files and a real S3 server
	$(call tier,trainer)

test-cluster: $(PY) testenv ## tests against a real kube-apiserver + etcd + kube-controller-manager on 127.0.0.1
	$(call tier,cluster)

e2e: $(PY) testenv ## real trainer processes, the test kubelet and Prometheus
	$(call tier,e2e)

lint: $(PY) helm-lint ## ruff, mypy (strict on operator/ and trainer-image/), import-linter
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy operator/stopline trainer-image/stopline_trainer tests
	$(VENV)/bin/lint-imports

helm-lint: testenv ## helm lint --strict on the chart
	$(STOPLINE_TESTENV)/bin/helm lint --strict helm/stopline

demo: ## the main command: for now it prints what it will do (the end-to-end issue lands it)
	@echo "make demo will start a real kube-apiserver, etcd, Prometheus, the operator and a test kubelet on"
	@echo "127.0.0.1, apply examples/sweep, show live progress and print each job's stop reason, best metric"
	@echo "and checkpoint. It is not built yet (see the end-to-end issue); today run 'make test'."

images kind-up kind-down kind-e2e deploy undeploy: ## (later issues) images, kind and helm deploy targets
	@echo "make $@: not built yet, see the helm/images issue"; exit 1
