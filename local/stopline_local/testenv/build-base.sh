#!/usr/bin/env bash
# The base root filesystems of the images `make images` builds without Docker, since no registry can be
# reached to pull python:3.11-slim or a PyTorch image:
#
#   python   Debian 12 minbase (debootstrap from Debian's package, run from where it is unpacked) with
#            python3.11 and a virtualenv at /opt/python first on PATH: what `pip install` and `python` in
#            operator/Dockerfile expect of python:3.11-slim
#   torch    python + torch from PyPI (with its CUDA libraries: PyPI has no CPU-only build), the wheels kept
#            in $IMAGES/wheels so a rebuild downloads nothing: what trainer-image/Dockerfile expects of its base
#
# Output: $STOPLINE_IMAGES (default ~/.cache/stopline/images/<suite>-py<torch>)/{python,torch}/rootfs, each
# made once; the mirror is the one this machine's apt uses.
set -euo pipefail

SUITE="${DEBIAN_SUITE:-bookworm}"
TORCH_VERSION="${TORCH_VERSION:-2.15.0}"
IMAGES="${STOPLINE_IMAGES:-$HOME/.cache/stopline/images/${SUITE}-torch${TORCH_VERSION}}"
started=$SECONDS

mirror() { # the first Debian archive this machine's apt is configured with
  local uri
  uri=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v -- -security | head -1)
  [[ -n "$uri" ]] || uri=$(sed -n 's/^deb \(\[[^]]*\] \)\?\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -1)
  echo "$uri"
}

in_root() { # in_root ROOTFS CMD...: run CMD chrooted in ROOTFS with /proc, /dev, this machine's DNS and CAs
  local root=$1; shift
  unshare --mount --fork bash -c '
    root=$1; shift
    mount --make-rprivate /
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
    mount --bind /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    exec chroot "$root" env -i PATH=/opt/python/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
      PIP_CERT=/etc/ssl/certs/ca-certificates.crt "$@"' _ "$root" "$@"
}

build_python() {
  local dir="$IMAGES/python" deb
  rm -rf "$dir" && mkdir -p "$dir/debootstrap"
  if ! apt-cache show debootstrap >/dev/null 2>&1; then apt-get update -qq; fi
  (cd "$dir/debootstrap" && apt-get download -qq debootstrap)
  deb=$(echo "$dir"/debootstrap/debootstrap_*.deb)
  dpkg-deb -x "$deb" "$dir/debootstrap/root"
  DEBOOTSTRAP_DIR="$dir/debootstrap/root/usr/share/debootstrap" \
    "$dir/debootstrap/root/usr/sbin/debootstrap" --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$dir/rootfs.tmp" "$(mirror)"
  in_root "$dir/rootfs.tmp" python3 -m venv /opt/python
  in_root "$dir/rootfs.tmp" /opt/python/bin/pip install --quiet --no-cache-dir --upgrade pip
  in_root "$dir/rootfs.tmp" sh -c 'apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old'
  mv "$dir/rootfs.tmp" "$dir/rootfs"
}

build_torch() {
  local dir="$IMAGES/torch"
  rm -rf "$dir" && mkdir -p "$dir" "$IMAGES/wheels"
  cp -a "$IMAGES/python/rootfs" "$dir/rootfs.tmp"
  mkdir -p "$dir/rootfs.tmp/wheels"
  mount --bind "$IMAGES/wheels" "$dir/rootfs.tmp/wheels"
  # downloaded by the base's own pip (its python, its platform) into the kept folder, then installed from it
  in_root "$dir/rootfs.tmp" /opt/python/bin/pip download --quiet --no-cache-dir --only-binary=:all: -d /wheels \
    "torch==$TORCH_VERSION" || { umount "$dir/rootfs.tmp/wheels"; return 1; }
  in_root "$dir/rootfs.tmp" /opt/python/bin/pip install --quiet --no-cache-dir --no-index --find-links /wheels \
    "torch==$TORCH_VERSION" || { umount "$dir/rootfs.tmp/wheels"; return 1; }
  umount "$dir/rootfs.tmp/wheels"
  rmdir "$dir/rootfs.tmp/wheels"
  mv "$dir/rootfs.tmp" "$dir/rootfs"
}

step() { # step NAME OUTPUT FUNCTION
  local name=$1 out=$2 fn=$3 t0=$SECONDS
  if [[ -d "$out" ]]; then
    printf 'images: %-8s cached  %s\n' "$name" "$out"
    return
  fi
  printf 'images: %-8s building ...\n' "$name"
  "$fn"
  printf 'images: %-8s built in %ss  %s (%s)\n' "$name" $((SECONDS - t0)) "$out" "$(du -sh "$out" | cut -f1)"
}

main() {
  echo "images: Debian $SUITE, torch $TORCH_VERSION -> $IMAGES"
  step python "$IMAGES/python/rootfs" build_python
  if [[ "${1:-}" != python ]]; then
    step torch "$IMAGES/torch/rootfs" build_torch
  fi
  echo "images: bases ready in $((SECONDS - started))s"
}

main "$@"
