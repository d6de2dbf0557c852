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
OPERATOR_IMAGE ?= ghcr.io/stopline-dev/operator:0.1.0
TRAINER_IMAGE ?= ghcr.io/stopline-dev/trainer:0.1.0
KIND_CLUSTER ?= stopline
HELM ?= helm
KUBECTL ?= kubectl
RELEASE ?= stopline
DEPLOY_NAMESPACE ?= stopline-system
export OPERATOR_IMAGE TRAINER_IMAGE KIND_CLUSTER HELM KUBECTL RELEASE DEPLOY_NAMESPACE
# make release VERSION=x.y.z: the one place a release's version comes from; REGISTRY is where it is pushed
VERSION ?=
REGISTRY ?= ghcr.io/stopline-dev
RELEASE_IMAGES ?= operator,trainer
# run one marked tier of tests/; a tier that has no test files yet says so instead of failing
tier = if compgen -G 'tests/$(1)/test_*.py' >/dev/null; then $(PYTEST) -m $(1) tests/$(1); else echo "$(1): no tests yet"; fi

.PHONY: help venv testenv testenv-demo testenv-registry release release-push testenv-node images-base cluster cluster-down test-node test-node-if-warm test test-unit test-trainer test-cluster test-faults e2e lint helm-lint demo up bench-operator bench-checkpoint images kind-up kind-down kind-e2e deploy undeploy

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(PY): pyproject.toml trainer-image/pyproject.toml local/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,s3]' -e './trainer-image[torch,lightning,s3,hf]' -e './local[s3]'
	touch $(PY)

venv: $(PY) ## create .venv: stopline (dev, s3), stopline-trainer (torch, lightning, s3), stopline-local

testenv: ## build kube-apiserver, kube-controller-manager, kubectl, etcd, helm, versitygw, prometheus into $(STOPLINE_TESTENV); Kueue, JobSet, Kubeflow Trainer and Training Operator into ~/.cache/stopline/<name>/<version> (cached)
	bash local/stopline_local/testenv/build.sh

testenv-registry: ## build the OCI distribution registry (v3) the cluster tier's release test pushes to (cached)
	bash local/stopline_local/testenv/build.sh registry

testenv-node: testenv ## build kubelet, kube-scheduler, CNI plugins, CoreDNS, pause; unpack containerd and runc (cached)
	bash local/stopline_local/testenv/build-node.sh

images-base: ## the images' bases without a registry: Debian minbase + python3.11 venv, + torch (cached)
	bash local/stopline_local/testenv/build-base.sh

cluster: $(PY) testenv-node ## a real one-node cluster (containerd, kubelet, CNI, CoreDNS) as root, until Ctrl-C
	$(PY) -m stopline_local.node

test-node: $(PY) testenv-node images-base ## as root: the real node, images built here, helm install, the stories in containers
	$(call tier,node)

# CI runs the node tier only when its cache is warm (cold, its builds alone take ~45 min on 2 cores) and
# the disk has room for a run (stopline_local.node.ROOM_NEEDED)
test-node-if-warm: $(PY)
	reason=$$($(PY) -c 'from stopline_local.node import why_not_run; print(why_not_run() or "")') && \
	if [ -z "$$reason" ]; then $(MAKE) test-node; else echo "node: tier skipped: $$reason"; fi

cluster-down: ## stop the cluster `make cluster` runs (as its Ctrl-C does)
	$(PY) -c 'import json, os, signal; from stopline_local.node import NODE_STATE; os.kill(json.loads(NODE_STATE.read_text())["pid"], signal.SIGTERM)'

test: lint test-unit test-trainer test-cluster test-faults e2e ## everything CI runs: lint, unit, trainer, cluster, faults and e2e tests

test-unit: $(PY) ## pure tests, no processes
	$(PYTEST) tests/unit

test-trainer: $(PY) testenv ## real trainer processes with real torch, checkpoints to files and a real S3 server
	$(call tier,trainer)

test-cluster: $(PY) testenv testenv-registry ## tests against a real kube-apiserver + etcd + kube-controller-manager on 127.0.0.1
	$(call tier,cluster)

test-faults: $(PY) testenv ## faults and hostile input on the real apiserver: Prometheus down, hostile answers, impostors, lost watches
	$(call tier,faults)

e2e: $(PY) testenv ## real trainer processes, the local kubelet and Prometheus
	$(call tier,e2e)

lint: $(PY) helm-lint ## ruff, mypy (strict on operator/, trainer-image/ and local/), import-linter
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy operator/stopline trainer-image/stopline_trainer local/stopline_local tests docs bench
	$(VENV)/bin/lint-imports

helm-lint: testenv ## helm lint --strict on the chart
	$(STOPLINE_TESTENV)/bin/helm lint --strict helm/stopline

# what the demo and `make up` start: the control plane (etcd, kube-apiserver, kube-controller-manager) and
# kubectl; the controllers, S3 server and Prometheus only some tiers need are built when those tiers run
testenv-demo: ## build only what `make demo` and `make up` start (cached; a subset of `make testenv`)
	bash local/stopline_local/testenv/build.sh etcd kube-apiserver kube-controller-manager kubectl

demo: $(PY) testenv-demo ## the whole story here: control plane, operator, local kubelet, examples/local/demo-sweep.yaml stopped early
	$(PY) -m stopline_local.demo

up: $(PY) testenv-demo ## a local cluster (control plane, operator, local kubelet) to drive with kubectl, until Ctrl-C
	$(PY) -m stopline_local.up

BENCH_JOBS ?= 100,1000,2000
bench-operator: $(PY) testenv ## the operator at N jobs (BENCH_JOBS), scrape and PromQL: table + plot in bench/operator/out
	$(PY) bench/operator/run.py --jobs $(BENCH_JOBS)

bench-checkpoint: $(PY) testenv ## POST /stop to weights durable vs dd / a plain S3 upload, ~3 MB and ~1 GB: bench/checkpoint/out
	$(PY) bench/checkpoint/run.py

# Root: the images are built as `make images` builds them without Docker. RELEASE_IMAGES=operator leaves
# the trainer image (a torch base, gigabytes) out, and says so.
release: $(PY) ## VERSION=x.y.z [REGISTRY=host/path]: dist/ with wheels, images + digests, chart, install.yaml, locks, SHA256SUMS
	@if [ -z "$(VERSION)" ]; then echo "make release VERSION=x.y.z [REGISTRY=$(REGISTRY)] [RELEASE_IMAGES=operator]" >&2; exit 2; fi
	bash local/stopline_local/testenv/build.sh helm
	$(PY) -m stopline_local.release build $(VERSION) --registry $(REGISTRY) --images $(RELEASE_IMAGES)

release-push: $(PY) ## push dist/ (images, chart) to the registry it was built for; PLAIN_HTTP=1 for a local one
	$(PY) -m stopline_local.release push $(if $(PLAIN_HTTP),--plain-http)

# With a Docker engine: docker build. Without one: the same Dockerfiles built here on bases made by
# images-base, and loaded into the node of `make cluster`.
images: ## build the operator and trainer images as $(OPERATOR_IMAGE) and $(TRAINER_IMAGE) (Docker, or here)
	if command -v docker >/dev/null && docker info >/dev/null 2>&1; then \
	  docker build -f operator/Dockerfile -t $(OPERATOR_IMAGE) . && \
	  docker build -f trainer-image/Dockerfile -t $(TRAINER_IMAGE) .; \
	else \
	  $(MAKE) images-base && $(PY) -m stopline_local.images; \
	fi

kind-up: ## create the kind cluster $(KIND_CLUSTER) (kept if it exists)
	kind get clusters | grep -qx '$(KIND_CLUSTER)' || kind create cluster --name $(KIND_CLUSTER) --wait 120s

kind-down: ## delete the kind cluster $(KIND_CLUSTER)
	kind delete cluster --name $(KIND_CLUSTER)

# helm installs crds/ on the first install only and never upgrades them: apply the CRD ourselves first.
deploy: ## apply the CRD, then helm upgrade --install the chart into $(DEPLOY_NAMESPACE) with $(OPERATOR_IMAGE)
	$(KUBECTL) apply --server-side -f crds/
	$(KUBECTL) wait --for=condition=Established --timeout=60s crd/trainingjobs.stopline.dev
	$(HELM) upgrade --install $(RELEASE) helm/stopline -n $(DEPLOY_NAMESPACE) --create-namespace --wait \
	  --set image.repository=$${OPERATOR_IMAGE%:*},image.tag=$${OPERATOR_IMAGE##*:}

# The CRD stays on purpose: deleting it deletes every TrainingJob in the cluster. To remove it too:
#   kubectl delete crd trainingjobs.stopline.dev
undeploy: ## helm uninstall the operator (the CRD and every TrainingJob stay)
	$(HELM) uninstall $(RELEASE) -n $(DEPLOY_NAMESPACE)

kind-e2e: ## on kind (needs Docker and kind): build, load, deploy, run a TrainingJob until stopline stops it
	bash tests/kind/e2e.sh
