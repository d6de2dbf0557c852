#!/usr/bin/env bash
# Build the binaries of the real local node (`make cluster`), once, into a cache outside the repo.
#
#   kubelet, kube-scheduler        from k8s.io/kubernetes at $K8S_VERSION via the Go module proxy
#   CNI plugins                    bridge, host-local, loopback, portmap from github.com/containernetworking/plugins
#   coredns                        from github.com/coredns/coredns via the Go module proxy
#   pause                          local/stopline_local/testenv/pause.go: the sandbox image's only file
#   containerd, containerd-shim-runc-v2, ctr, runc
#                                  Debian 12's packages (containerd 1.6.20, runc 1.1.5), unpacked, not installed.
#                                  kubelet 1.34 speaks CRI v1 only, which containerd serves since 1.6; it asks
#                                  for RuntimeConfig (the cgroup driver) first, which 1.6 does not implement
#                                  ("Unimplemented"), and falls back to its own cgroupDriver. A later kubelet
#                                  that requires RuntimeConfig needs containerd 2 (from the Go module proxy).
#
# Output: $STOPLINE_NODEENV (default ~/.cache/stopline/node/<k8s>-cni<cni>-coredns<coredns>)/bin.
# The control plane's binaries come from build.sh ($STOPLINE_TESTENV). A step whose binary exists is skipped.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=build.sh
source "$here/build.sh"
STEP_PREFIX=nodeenv

CNI_VERSION="${CNI_VERSION:-1.9.0}"
COREDNS_VERSION="${COREDNS_VERSION:-1.14.7}"
NODEENV="${STOPLINE_NODEENV:-$HOME/.cache/stopline/node/${K8S_VERSION}-cni${CNI_VERSION}-coredns${COREDNS_VERSION}}"
BIN="$NODEENV/bin"
WORK="$NODEENV/build"

build_kubelet() { k8s_build kubelet; }
build_scheduler() { k8s_build kube-scheduler; }

build_cni() { # the plugins sit in $BIN/cni, the directory containerd's CRI plugin is pointed at
  local dir="$WORK/cni" p
  mkdir -p "$dir" "$BIN/cni"
  if [[ ! -f "$dir/go.mod" ]]; then
    printf 'module stopline.dev/nodeenv/cni\n\ngo 1.24\n\nrequire github.com/containernetworking/plugins v%s\n' "$CNI_VERSION" >"$dir/go.mod"
  fi
  for p in main/bridge ipam/host-local main/loopback meta/portmap; do
    (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/cni/${p#*/}.tmp" "github.com/containernetworking/plugins/plugins/$p")
    mv "$BIN/cni/${p#*/}.tmp" "$BIN/cni/${p#*/}"
  done
}

build_coredns() {
  local dir="$WORK/coredns"
  mkdir -p "$dir"
  if [[ ! -f "$dir/go.mod" ]]; then
    printf 'module stopline.dev/nodeenv/coredns\n\ngo 1.24\n\nrequire github.com/coredns/coredns v%s\n' "$COREDNS_VERSION" >"$dir/go.mod"
  fi
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/coredns.tmp" github.com/coredns/coredns)
  mv "$BIN/coredns.tmp" "$BIN/coredns"
}

build_pause() {
  local dir="$WORK/pause"
  mkdir -p "$dir"
  cp "$here/pause.go" "$dir/main.go"
  printf 'module stopline.dev/nodeenv/pause\n\ngo 1.24\n' >"$dir/go.mod"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/pause.tmp" .)
  mv "$BIN/pause.tmp" "$BIN/pause"
}

build_containerd() { # Debian's packages unpacked: the binaries only, no service, nothing installed
  local dir="$WORK/debian"
  rm -rf "$dir" && mkdir -p "$dir"
  if ! apt-cache show containerd >/dev/null 2>&1; then
    apt-get update -qq
  fi
  (cd "$dir" && apt-get download -qq containerd runc)
  for deb in "$dir"/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
  cp "$dir/root/usr/sbin/runc" "$BIN/runc"
  for b in containerd-shim-runc-v2 ctr containerd; do
    cp "$dir/root/usr/bin/$b" "$BIN/$b.tmp" && mv "$BIN/$b.tmp" "$BIN/$b"
  done
}

node_main() {
  mkdir -p "$BIN"
  echo "nodeenv: Kubernetes v$K8S_VERSION, CNI plugins v$CNI_VERSION, CoreDNS v$COREDNS_VERSION -> $NODEENV"
  started=$SECONDS
  step containerd+runc "$BIN/containerd" build_containerd
  step pause "$BIN/pause" build_pause
  step kubelet "$BIN/kubelet" build_kubelet
  step kube-scheduler "$BIN/kube-scheduler" build_scheduler
  step cni-plugins "$BIN/cni/portmap" build_cni
  step coredns "$BIN/coredns" build_coredns
  echo "nodeenv: ready in $((SECONDS - started))s, $(du -sh "$BIN" | cut -f1) of binaries in $BIN"
}

node_main "$@"
