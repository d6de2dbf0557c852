"""`make images` without a Docker engine: operator/Dockerfile and trainer-image/Dockerfile built by a small
Dockerfile interpreter, as OCI archives, loaded into the real node's containerd (`make cluster`).

Each Dockerfile's `ARG BASE` selects its base: no registry can be reached here, so the bases are root
filesystems made by testenv/build-base.sh (Debian 12 minbase with python3.11 in a venv at /opt/python;
the same plus torch from PyPI), named `stopline-base/python` and `stopline-base/torch`. Docker builds the
same files with their default bases.

The build mounts an overlay on the base's tree; RUN runs chrooted in it (own mount namespace, /proc, /dev
and this machine's DNS, so pip reaches the package index); COPY copies from the repository. The image is
two layers: the base's (a tar made once and cached beside it) and the overlay's upper folder, its
whiteouts turned into OCI ones. Supported: ARG, FROM, ENV, WORKDIR, COPY, RUN, USER, EXPOSE, ENTRYPOINT and
CMD; HEALTHCHECK is ignored (Kubernetes ignores it too).

    sudo .venv/bin/python -m stopline_local.images            # both, loaded into the running node
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from stopline_local import oci
from stopline_local.controlplane import REPO

SUITE = os.environ.get("DEBIAN_SUITE", "bookworm")
TORCH_VERSION = os.environ.get("TORCH_VERSION", "2.15.0")
IMAGES = Path(
    os.environ.get(
        "STOPLINE_IMAGES", Path.home() / ".cache" / "stopline" / "images" / f"{SUITE}-torch{TORCH_VERSION}"
    )
)
BASES = {"stopline-base/python": "python", "stopline-base/torch": "torch"}
BASE_PATH = "/opt/python/bin:" + oci.DEFAULT_PATH  # the bases' venv first, like python:3.11-slim's python
OPERATOR_IMAGE = os.environ.get("OPERATOR_IMAGE", "ghcr.io/stopline-dev/operator:0.1.0")
TRAINER_IMAGE = os.environ.get("TRAINER_IMAGE", "ghcr.io/stopline-dev/trainer:0.1.0")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# which Dockerfile, named how, on which base
PLANS = {
    "operator": (REPO / "operator" / "Dockerfile", OPERATOR_IMAGE, "stopline-base/python"),
    "trainer": (REPO / "trainer-image" / "Dockerfile", TRAINER_IMAGE, "stopline-base/torch"),
}
ARG_REFERENCE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


class MissingBase(RuntimeError):
    """A base root filesystem is not built."""


@dataclass
class Build:
    """The state of one Dockerfile's build: where it writes, and the image config it has reached."""

    dockerfile: Path
    tag: str
    args: dict[str, str]
    work: Path
    config: oci.ImageConfig = field(default_factory=oci.ImageConfig)
    base: str = ""
    context: Path = REPO  # what COPY copies from (a release copies the sources with its version stamped)

    @property
    def merged(self) -> Path:
        return self.work / "merged"

    @property
    def upper(self) -> Path:
        return self.work / "upper"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per logical line: continuations joined, comments and blank lines dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, rest = whole.partition(" ")
        found.append((keyword.upper(), rest.strip()))
    return found


def substitute(value: str, variables: dict[str, str]) -> str:
    return ARG_REFERENCE.sub(lambda match: variables.get(match.group(1) or match.group(2), ""), value)


def base_layer(name: str) -> Path:
    """The tar of a base's tree, made once next to it."""
    rootfs = IMAGES / name / "rootfs"
    if not rootfs.is_dir():
        raise MissingBase(f"{rootfs} is missing: run `make images-base` (testenv/build-base.sh)")
    layer = IMAGES / name / "layer.tar"
    if not layer.exists():
        oci.rootfs_layer(layer.with_suffix(".tmp"), rootfs).replace(layer)
    return layer


def _in_root(build: Build, command: list[str]) -> None:
    """Run `command` chrooted in the build's tree, as its USER, with its ENV."""
    # this machine's CAs (its package index may sit behind a proxy with its own), for pip in RUN only
    env = {"HOME": "/root", "PIP_CERT": CA_BUNDLE, **build.config.env}
    user = ["--userspec", build.config.user] if build.config.user else []
    workdir = shlex.quote(build.config.workdir)  # made again if a RUN deleted it, as BuildKit does
    script = (
        'set -e; root=$1; shift; mount --make-rprivate /; mount -t proc proc "$root/proc"; '
        'mount --rbind /dev "$root/dev"; mount --bind /etc/resolv.conf "$root/etc/resolv.conf"; '
        f'mount --bind {CA_BUNDLE} "$root{CA_BUNDLE}"; '
        'exec chroot "$@"'
    )
    subprocess.run(
        [
            "unshare",
            "--mount",
            "--fork",
            "sh",
            "-c",
            script,
            "_",
            str(build.merged),
            *user,
            str(build.merged),
            "sh",
            "-c",
            f'mkdir -p {workdir} && cd {workdir} && exec "$@"',
            "_",
            *command,
        ],
        env=env,
        check=True,
    )


def _copy(build: Build, rest: str) -> None:
    *sources, dest = shlex.split(rest)
    if any(source.startswith("--") for source in sources):
        raise ValueError(f"COPY flags are not supported here: {rest}")
    target = Path(dest) if dest.startswith("/") else Path(build.config.workdir) / dest
    inside = build.merged / target.relative_to("/")
    into_folder = dest.endswith("/") or len(sources) > 1
    for source in sources:
        path = build.context / source
        if path.is_dir():
            shutil.copytree(
                path, inside, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        elif into_folder:
            inside.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, inside / path.name)
        else:
            inside.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, inside)


def _exec_form(rest: str) -> list[str]:
    if rest.startswith("["):
        return [str(item) for item in json.loads(rest)]
    return ["/bin/sh", "-c", rest]


def _step(build: Build, keyword: str, rest: str) -> None:
    config = build.config
    if keyword == "ARG":
        name, _, default = rest.partition("=")
        build.args.setdefault(name, default)
    elif keyword == "FROM":
        base = substitute(rest, build.args).split()[0]
        if base not in BASES:
            raise MissingBase(
                f"base {base} is not one made here; pass --build-arg BASE=<one of {sorted(BASES)}>"
            )
        build.base = BASES[base]
        config.env["PATH"] = BASE_PATH
        lower = IMAGES / build.base / "rootfs"
        base_layer(build.base)
        for path in (build.merged, build.upper, build.work / "overlay-work"):
            path.mkdir(parents=True)
        subprocess.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={lower},upperdir={build.upper},workdir={build.work / 'overlay-work'}",
                str(build.merged),
            ],
            check=True,
        )
    elif keyword == "ENV":
        for pair in shlex.split(rest):
            name, _, value = pair.partition("=")
            config.env[name] = substitute(value, {**build.args, **config.env})
    elif keyword == "WORKDIR":
        config.workdir = str(Path(config.workdir) / rest)
        (build.merged / config.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
    elif keyword == "COPY":
        _copy(build, rest)
    elif keyword == "RUN":
        _in_root(build, _exec_form(rest))
    elif keyword == "USER":
        config.user = rest
    elif keyword == "EXPOSE":
        config.exposed_ports += [port if "/" in port else f"{port}/tcp" for port in rest.split()]
    elif keyword == "ENTRYPOINT":
        config.entrypoint = _exec_form(rest)
        config.cmd = []
    elif keyword == "CMD":
        config.cmd = _exec_form(rest)
    elif keyword != "HEALTHCHECK":
        raise ValueError(f"{build.dockerfile}: {keyword} is not supported by this builder")


def upper_layer(out: Path, upper: Path) -> Path:
    """The overlay's upper folder as an OCI layer: a deleted file (a 0/0 character device there) becomes
    `.wh.<name>`, an opaque folder gets `.wh..wh..opq`."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for folder, subfolders, names in os.walk(upper):
            subfolders.sort()
            here = Path(folder)
            relative = here.relative_to(upper)
            if here != upper and _opaque(here):
                tar.addfile(tarfile.TarInfo(str(relative / ".wh..wh..opq")))
            for name in sorted(subfolders + names):
                path = here / name
                mode = path.lstat().st_mode
                if stat.S_ISCHR(mode) and path.lstat().st_rdev == 0:
                    tar.addfile(tarfile.TarInfo(str(relative / f".wh.{name}")))
                else:
                    tar.add(path, arcname=str(relative / name), recursive=False)
    return out


def _opaque(folder: Path) -> bool:
    try:
        return os.getxattr(folder, "trusted.overlay.opaque") == b"y"
    except OSError:
        return False


def build_image(dockerfile: Path, tag: str, args: dict[str, str], out: Path, context: Path = REPO) -> Path:
    """Build `dockerfile` (context: the repository, unless given) into the OCI archive `out`, named `tag`."""
    work = out.with_name(out.name + ".build")
    subprocess.run(["umount", "--recursive", str(work / "merged")], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    build = Build(dockerfile, tag, dict(args), work, context=context)
    try:
        for keyword, rest in instructions(dockerfile.read_text()):
            shown = dockerfile.relative_to(REPO) if dockerfile.is_relative_to(REPO) else dockerfile
            print(f"images: {shown}: {keyword} {rest[:100]}", flush=True)
            _step(build, keyword, rest)
    finally:
        subprocess.run(["umount", "--recursive", str(build.merged)], capture_output=True)
    diff = upper_layer(work / "upper.tar", build.upper)
    oci.write_archive(out, tag, [base_layer(build.base), diff], build.config)
    shutil.rmtree(work)
    return out


def load(archive: Path, socket: Path, ctr: Path) -> None:
    subprocess.run(
        [str(ctr), f"--address={socket}", "--namespace=k8s.io", "images", "import", str(archive)], check=True
    )


def main(argv: list[str] | None = None) -> int:
    from stopline_local.node import NODE_STATE, node_binary

    parser = argparse.ArgumentParser(
        prog="python -m stopline_local.images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("which", nargs="*", help=f"some of {sorted(PLANS)} (default: both)")
    parser.add_argument("--no-load", action="store_true", help="only write the archives")
    options = parser.parse_args(argv)
    unknown = set(options.which) - set(PLANS)
    if unknown:
        parser.error(f"no image named {sorted(unknown)}; known: {sorted(PLANS)}")
    for which in options.which or sorted(PLANS):
        dockerfile, tag, base = PLANS[which]
        started = time.monotonic()
        archive = build_image(dockerfile, tag, {"BASE": base}, IMAGES / "out" / f"{which}.tar")
        print(f"images: {tag} built in {time.monotonic() - started:.0f}s -> {archive}", flush=True)
        if not options.no_load:
            if not NODE_STATE.exists():
                print(
                    f"images: no node is running ({NODE_STATE} is missing): start `make cluster`",
                    file=sys.stderr,
                )
                return 1
            state = json.loads(NODE_STATE.read_text())
            started = time.monotonic()
            load(archive, Path(state["socket"]), node_binary("ctr"))
            print(f"images: {tag} loaded into the node in {time.monotonic() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
