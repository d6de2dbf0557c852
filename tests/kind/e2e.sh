#!/usr/bin/env bash
# make kind-e2e: the real images on a real kind cluster. Builds the operator and trainer images, loads them
# into kind, deploys the chart, runs the example trainer under a TrainingJob with an impatient patience
# criterion, and waits until stopline has stopped it and recorded the checkpoint on a PVC.
# Needs Docker, kind, kubectl and helm on PATH; exits 2 when one is missing. Not run in CI (no Docker there).
# Every kubectl/helm call names the kind context, so it never touches the cluster of your current context.
set -Eeuo pipefail  # -E: the ERR trap fires inside functions (k) too
cd "$(dirname "$0")/../.."

KIND_CLUSTER=${KIND_CLUSTER:-stopline}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-ghcr.io/stopline-dev/operator:0.1.0}
TRAINER_IMAGE=${TRAINER_IMAGE:-ghcr.io/stopline-dev/trainer:0.1.0}
RELEASE=${RELEASE:-stopline}
DEPLOY_NAMESPACE=${DEPLOY_NAMESPACE:-stopline-system}
E2E_NAMESPACE=${E2E_NAMESPACE:-stopline-e2e}
E2E_TIMEOUT=${E2E_TIMEOUT:-600s}
JOB=e2e-patience
CONTEXT=kind-$KIND_CLUSTER

say() { echo "kind-e2e: $*"; }
k() { kubectl --context "$CONTEXT" "$@"; }

for tool in docker kind kubectl helm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    say "needs $tool on PATH (docker, kind, kubectl and helm); this machine has no $tool" >&2
    exit 2
  fi
done
if ! docker info >/dev/null 2>&1; then
  say "docker is installed but its daemon does not answer (docker info failed)" >&2
  exit 2
fi

# On any failure: what the operator and the trainer said, and where the TrainingJob got to.
dump() {
  say "FAILED; the TrainingJob, its pods, events and the logs follow" >&2
  k -n "$E2E_NAMESPACE" get tj,jobs,pods,pvc -o wide || true
  k -n "$E2E_NAMESPACE" get tj "$JOB" -o yaml || true
  k -n "$E2E_NAMESPACE" get events --sort-by=.lastTimestamp || true
  k -n "$DEPLOY_NAMESPACE" logs -l "app.kubernetes.io/name=stopline,app.kubernetes.io/instance=$RELEASE" \
    --tail=300 || true
  k -n "$E2E_NAMESPACE" logs -l "stopline.dev/job=$JOB" --all-containers --tail=100 || true
}
trap dump ERR

say "cluster $KIND_CLUSTER"
make kind-up KIND_CLUSTER="$KIND_CLUSTER"

say "images $OPERATOR_IMAGE and $TRAINER_IMAGE"
make images OPERATOR_IMAGE="$OPERATOR_IMAGE" TRAINER_IMAGE="$TRAINER_IMAGE"
kind load docker-image --name "$KIND_CLUSTER" "$OPERATOR_IMAGE" "$TRAINER_IMAGE"

say "operator into $DEPLOY_NAMESPACE"
make deploy OPERATOR_IMAGE="$OPERATOR_IMAGE" RELEASE="$RELEASE" DEPLOY_NAMESPACE="$DEPLOY_NAMESPACE" \
  KUBECTL="kubectl --context $CONTEXT" HELM="helm --kube-context $CONTEXT"

say "TrainingJob $E2E_NAMESPACE/$JOB"
k create namespace "$E2E_NAMESPACE" --dry-run=client -o yaml | k apply -f -
# a rerun starts from scratch: the old job's status and checkpoints would make the wait pass at once
k -n "$E2E_NAMESPACE" delete tj "$JOB" --ignore-not-found --wait
k -n "$E2E_NAMESPACE" delete pvc checkpoints --ignore-not-found --wait
# kind's default storage class "standard" (local-path) creates the folder world-writable for uid 10001.
# The example trainer runs 5 s epochs on the CPU; requiring 50% better val_loss each epoch, patience 2
# stops it after a few epochs, long before --epochs 60.
k -n "$E2E_NAMESPACE" apply -f - <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: checkpoints
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: standard
  resources:
    requests: {storage: 1Gi}
---
apiVersion: stopline.dev/v1alpha1
kind: TrainingJob
metadata:
  name: $JOB
spec:
  maxEpochs: 60
  template:
    spec:
      containers:
      - name: trainer
        image: $TRAINER_IMAGE
        imagePullPolicy: IfNotPresent
        args: ["--epochs", "60", "--steps-per-epoch", "20", "--sleep-per-step", "0.25", "--hidden", "64"]
  objective: {metric: val_loss, mode: min}
  metrics: {interval: 2s}
  criteria:
  - name: impatient
    patience: {patience: 2, minDelta: 0.5, minDeltaMode: relative, warmupEpochs: 1}
  checkpoint:
    pvc: {claimName: checkpoints, path: runs/$JOB}
  stopPolicy: {gracePeriod: 2m}
EOF

say "waiting up to $E2E_TIMEOUT for phase Stopped"
k -n "$E2E_NAMESPACE" wait "tj/$JOB" --for=jsonpath='{.status.phase}'=Stopped --timeout="$E2E_TIMEOUT"
k -n "$E2E_NAMESPACE" get tj -o wide
checkpoint=$(k -n "$E2E_NAMESPACE" get tj "$JOB" -o jsonpath='{.status.checkpoint}')
say "status.checkpoint: $checkpoint"
[[ $checkpoint == *'"uri"'* ]] || { say "Stopped without status.checkpoint.uri" >&2; false; }
say "passed"
