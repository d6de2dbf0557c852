"""`make release VERSION=x.y.z`: every artifact of one version in dist/, from the committed sources.

    python -m stopline_local.release build 0.2.0                       # both images (the trainer's has torch)
    python -m stopline_local.release build 0.2.0 --images operator     # the trainer image left out, said so
    python -m stopline_local.release push                              # dist/ to the registry it names

dist/ (a release replaces it whole):
    stopline-X-py3-none-any.whl, stopline-X.tar.gz   the operator's distribution (twine check --strict)
    stopline_trainer-X-py3-none-any.whl, ...tar.gz   the in-pod library
    operator-X.oci.tar, trainer-X.oci.tar            the images as OCI image layouts (tar), named
                                                     REGISTRY/operator:X and REGISTRY/trainer:X
    operator-X.lock.txt, trainer-X.lock.txt          every Python distribution the image installs, pinned,
                                                     with the sha256 of its file (pip --require-hashes)
    stopline-X.tgz                                   the chart: version and appVersion X, the operator
                                                     image pinned as REGISTRY/operator@sha256:...
    install.yaml                                     that chart rendered (helm template) with a Namespace:
                                                     CRD, RBAC, Deployment... (kubectl apply --server-side)
    release.json                                     what is where: version, commit, references, digests
    SHA256SUMS                                       sha256sum -c SHA256SUMS

Versions come from VERSION alone. The sources are HEAD's (`git archive`: a release is of a commit, and
other uncommitted work in the checkout stays out of it), extracted into build/release/src, where both
pyproject.toml, Chart.yaml and values.yaml are stamped; the working tree is never written. The images are
built as `make images` builds them without Docker (stopline_local.images, on the bases of
testenv/build-base.sh), so building them needs root. REGISTRY (default ghcr.io/stopline-dev) is where the
release is to be pushed: the images are REGISTRY/<name>, the chart oci://REGISTRY/charts/stopline. `push`
pushes the images with the registry API (no auth: a local registry) and the chart with `helm push`.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stopline_local import images, registry
from stopline_local.controlplane import REPO, built_binary

DIST = REPO / "dist"
BUILD = REPO / "build" / "release"
DEFAULT_REGISTRY = "ghcr.io/stopline-dev"
NAMESPACE = "stopline-system"  # install.yaml's, as the Makefile's `make deploy`
VERSION_PATTERN = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")  # both SemVer (helm) and PEP 440
# what the release takes from HEAD
SOURCES = ("pyproject.toml", "README.md", "operator", "trainer-image", "helm/stopline", "crds")
# image name -> (Dockerfile in the sources, base made by build-base.sh)
IMAGE_PLANS = {
    "operator": ("operator/Dockerfile", "stopline-base/python"),
    "trainer": ("trainer-image/Dockerfile", "stopline-base/torch"),
}
# The images' Python is Debian 12's CPython 3.11 on glibc 2.36: the lock names the files pip picks there.
IMAGE_PYTHON = ("--platform", "manylinux_2_36_x86_64", "--python-version", "3.11", "--implementation", "cp")
TRAINER_LEFT_OUT = (
    "the trainer image is left out (--images operator): its base holds torch and its CUDA wheels, "
    "gigabytes to download and to layer; a release to publish builds both (the default)"
)


class ReleaseError(RuntimeError):
    """A step of the release failed; the message says which and why."""


@dataclass(frozen=True)
class Image:
    reference: str  # REGISTRY/<name>:X
    repository: str  # REGISTRY/<name>
    digest: str  # sha256:... of the manifest: what the chart and install.yaml pull
    archive: str  # file names in dist/
    lock: str


def log(message: str) -> None:
    print(f"release: {message}", flush=True)


def run(command: Sequence[str | Path], cwd: Path | None = None, input: str | None = None) -> str:
    """Run a command; its stdout, or a ReleaseError with its output."""
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, input=input, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ReleaseError(
            f"{' '.join(str(part) for part in command)} exited with {result.returncode}:\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result.stdout


def check_version(version: str) -> str:
    if not VERSION_PATTERN.match(version):
        raise ReleaseError(
            f"VERSION must be x.y.z (SemVer for the chart, PEP 440 for the wheels): {version!r}"
        )
    return version


def check_registry(name: str) -> str:
    if not re.fullmatch(r"[a-z0-9.-]+(:\d+)?(/[a-z0-9._-]+)*", name):
        raise ReleaseError(f"REGISTRY must be host[:port][/path], lower case: {name!r}")
    return name


def head_commit() -> str:
    return run(["git", "-C", REPO, "rev-parse", "HEAD"]).strip()


def export_sources(commit: str, into: Path) -> None:
    """HEAD's SOURCES into `into`, as committed; says which of them have uncommitted changes left out."""
    dirty = run(["git", "-C", REPO, "status", "--porcelain", "--", *SOURCES]).splitlines()
    if dirty:
        left_out = ", ".join(line[3:] for line in dirty)
        log(f"releasing {commit[:12]} as committed; left out, uncommitted: {left_out}")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, "--", *SOURCES],
        capture_output=True,
        check=True,
    ).stdout
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="tar")


def stamp(path: Path, pattern: str, replacement: str) -> None:
    """Replace the one line matching `pattern` (a whole line) in `path`; fail if it is not exactly one."""
    text = path.read_text()
    stamped, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise ReleaseError(f"{path}: {count} lines match {pattern!r}, one expected: update release.py")
    path.write_text(stamped)


def stamp_distributions(src: Path, version: str) -> None:
    for pyproject in (src / "pyproject.toml", src / "trainer-image" / "pyproject.toml"):
        stamp(pyproject, r'^version = "[^"]*"$', f'version = "{version}"')


def build_distributions(src: Path, dist: Path) -> list[str]:
    """The sdists and wheels of stopline and stopline-trainer (each wheel built from its sdist), checked."""
    for project in (src, src / "trainer-image"):
        run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", dist, project])
    built = sorted(
        path.name for path in dist.iterdir() if path.suffix == ".whl" or path.name.endswith(".tar.gz")
    )
    run([sys.executable, "-m", "twine", "check", "--strict", *(dist / name for name in built)])
    return built


def ensure_bases(names: Sequence[str]) -> None:
    """The bases the images are built on (testenv/build-base.sh), built once if missing."""
    if os.geteuid() != 0:
        raise ReleaseError("building the images needs root (an overlay mount and chroot, as `make images`)")
    wanted = ["python", *(["torch"] if "trainer" in names else [])]
    if all((images.IMAGES / base / "rootfs").is_dir() for base in wanted):
        return
    script = REPO / "local" / "stopline_local" / "testenv" / "build-base.sh"
    subprocess.run(["bash", str(script), *([] if "torch" in wanted else ["python"])], check=True)


def installed_distributions(archive: Path) -> dict[str, str]:
    """{name: version} of every distribution pip installed in the image (site-packages/*.dist-info), its
    layers applied in order, whiteouts included."""
    found: dict[str, tuple[str, str]] = {}  # dist-info folder -> (name, version)
    with tarfile.open(archive) as outer:
        _, data = registry.layout_manifest(archive)
        for layer in json.loads(data)["layers"]:
            stream = outer.extractfile(f"blobs/sha256/{layer['digest'].partition(':')[2]}")
            if stream is None:
                raise ReleaseError(f"{archive}: no blob {layer['digest']}")
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    path = posixpath.normpath(member.name.lstrip("/"))
                    folder, name = posixpath.split(path)
                    if name == ".wh..wh..opq":  # what the lower layers had in `folder` is hidden
                        found = {
                            key: value
                            for key, value in found.items()
                            if key != folder and not key.startswith(f"{folder}/")
                        }
                    elif name.startswith(".wh."):
                        gone = posixpath.join(folder, name[4:])
                        found = {
                            key: value
                            for key, value in found.items()
                            if key != gone and not key.startswith(f"{gone}/")
                        }
                    elif (
                        name == "METADATA"
                        and folder.endswith(".dist-info")
                        and posixpath.basename(posixpath.dirname(folder)) == "site-packages"
                        and member.isfile()
                    ):
                        content = tar.extractfile(member)
                        if content is None:
                            continue
                        headers = email.parser.BytesHeaderParser().parsebytes(content.read())
                        found[folder] = (str(headers["Name"]), str(headers["Version"]))
    return dict(sorted(found.values(), key=lambda item: item[0].lower()))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def write_lock(archive: Path, out: Path, own: Sequence[str], header: str) -> int:
    """A requirements file of every distribution in the image but `own` (this release's, from the
    sources), pinned, each with the sha256 of the file pip installs on the image's platform (a pip --report
    of the pins)."""
    installed = {
        name: version
        for name, version in installed_distributions(archive).items()
        if canonical(name) not in own
    }
    if not installed:
        raise ReleaseError(f"{archive}: no site-packages/*.dist-info found: nothing to lock")
    with tempfile.TemporaryDirectory() as work:
        pins = Path(work) / "pins.txt"
        pins.write_text("".join(f"{name}=={version}\n" for name, version in installed.items()))
        report_path = Path(work) / "report.json"
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--dry-run",
                "--ignore-installed",
                "--no-deps",
                *IMAGE_PYTHON,
                "--report",
                report_path,
                "-r",
                pins,
            ]
        )
        report = json.loads(report_path.read_text())
    lines = [header]
    hashed: set[str] = set()
    for item in sorted(report["install"], key=lambda item: canonical(item["metadata"]["name"])):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        sha256 = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        if not sha256:
            raise ReleaseError(
                f"pip reported no sha256 for {name}=={version} ({item['download_info'].get('url')})"
            )
        lines.append(f"{canonical(name)}=={version} \\\n    --hash=sha256:{sha256}")
        hashed.add(canonical(name))
    missing = {canonical(name) for name in installed} - hashed
    if missing:
        raise ReleaseError(f"pip's report has no file for {sorted(missing)}")
    out.write_text("\n".join(lines) + "\n")
    return len(hashed)


def build_images(
    names: Sequence[str], src: Path, build: Path, dist: Path, registry_name: str, version: str
) -> dict[str, Image]:
    ensure_bases(names)
    built: dict[str, Image] = {}
    for name in names:
        dockerfile, base = IMAGE_PLANS[name]
        repository = f"{registry_name}/{name}"
        reference = f"{repository}:{version}"
        started = time.monotonic()
        out = images.build_image(
            src / dockerfile, reference, {"BASE": base}, build / "images" / f"{name}.oci.tar", context=src
        )
        archive = dist / f"{name}-{version}.oci.tar"
        shutil.move(out, archive)
        digest = registry.layout_digest(archive)
        lock = dist / f"{name}-{version}.lock.txt"
        own = ["stopline"] if name == "operator" else ["stopline-trainer"]
        header = (
            f"# stopline {version}: every Python distribution pip installed in the {name} image\n"
            f"#   {repository}@{digest}\n"
            "# pinned, with the sha256 of the file pip installs there (CPython 3.11, manylinux_2_36).\n"
            f"# {own[0]}=={version} itself is this release's, built from its sources.\n"
            f"#   pip install --no-deps --require-hashes -r {lock.name}"
        )
        count = write_lock(archive, lock, own, header)
        built[name] = Image(reference, repository, digest, archive.name, lock.name)
        log(f"{reference} built in {time.monotonic() - started:.0f}s: {digest}, {count} distributions locked")
    return built


def stamp_chart(chart: Path, version: str, operator: Image | None, registry_name: str) -> None:
    """Chart.yaml's version and appVersion; values.yaml's image: the operator's repository, tag, digest."""
    crds = chart / "crds"
    if crds.is_symlink():  # the checkout links crds/; a packaged chart holds the file itself
        target = crds.resolve()
        crds.unlink()
        shutil.copytree(target, crds)
    stamp(chart / "Chart.yaml", r"^version: .*$", f"version: {version}")
    stamp(chart / "Chart.yaml", r"^appVersion: .*$", f'appVersion: "{version}"')
    values = chart / "values.yaml"
    stamp(values, r"^  repository: .*$", f"  repository: {registry_name}/operator")
    stamp(values, r'^  tag: ""$', f'  tag: "{version}"')
    if operator is not None:
        stamp(values, r'^  digest: ""$', f'  digest: "{operator.digest}"')


def package_chart(chart: Path, dist: Path, version: str) -> str:
    helm = built_binary("helm")
    run([helm, "lint", "--strict", chart])
    run([helm, "package", chart, "--destination", dist])
    name = f"stopline-{version}.tgz"
    if not (dist / name).is_file():
        raise ReleaseError(f"helm package wrote no {name} in {dist}")
    return name


def write_install(dist: Path, chart: str, version: str) -> str:
    """install.yaml: the Namespace, then the chart rendered with its defaults into it (CRD first)."""
    rendered = run(
        [
            built_binary("helm"),
            "template",
            "stopline",
            dist / chart,
            "--namespace",
            NAMESPACE,
            "--include-crds",
        ]
    )
    namespace = (
        "apiVersion: v1\nkind: Namespace\nmetadata:\n"
        f"  name: {NAMESPACE}\n  labels:\n    app.kubernetes.io/part-of: stopline\n"
    )
    header = (
        f"# stopline {version}: the operator in the namespace {NAMESPACE}, with its CRD and RBAC.\n"
        "#   kubectl apply --server-side -f install.yaml\n"
        f"# The chart {chart} rendered with its defaults (helm template). Removing it: delete the objects\n"
        "# but the CRD, which deleting would delete every TrainingJob.\n"
    )
    (dist / "install.yaml").write_text(f"{header}---\n{namespace}{rendered}")
    return "install.yaml"


def write_checksums(dist: Path) -> None:
    lines = []
    for path in sorted(dist.iterdir()):
        if path.name == "SHA256SUMS" or not path.is_file():
            continue
        sha = hashlib.sha256()
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                sha.update(chunk)
        lines.append(f"{sha.hexdigest()}  {path.name}\n")
    (dist / "SHA256SUMS").write_text("".join(lines))


def release(
    version: str,
    registry_name: str = DEFAULT_REGISTRY,
    image_names: Sequence[str] = ("operator", "trainer"),
    dist: Path = DIST,
    build: Path = BUILD,
) -> dict[str, Any]:
    """Write dist/ for `version`; returns what release.json says."""
    started = time.monotonic()
    check_version(version)
    check_registry(registry_name)
    unknown = set(image_names) - set(IMAGE_PLANS)
    if unknown or "operator" not in image_names:
        raise ReleaseError(f"--images: the operator and maybe the trainer; not {sorted(image_names)}")
    if "trainer" not in image_names:
        log(TRAINER_LEFT_OUT)
    built_binary("helm")  # the chart is packaged last: without helm, say so before minutes of builds
    commit = head_commit()
    src = build / "src"
    export_sources(commit, src)
    stamp_distributions(src, version)
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir(parents=True)
    distributions = build_distributions(src, dist)
    log(f"{', '.join(distributions)}: built and twine-checked")
    built = build_images(
        [name for name in IMAGE_PLANS if name in image_names], src, build, dist, registry_name, version
    )
    chart_dir = src / "helm" / "stopline"
    stamp_chart(chart_dir, version, built["operator"], registry_name)
    chart = package_chart(chart_dir, dist, version)
    install = write_install(dist, chart, version)
    summary: dict[str, Any] = {
        "version": version,
        "commit": commit,
        "registry": registry_name,
        "distributions": distributions,
        "images": {name: asdict(image) for name, image in built.items()},
        "left_out": [] if "trainer" in built else ["trainer image (--images operator)"],
        "chart": {"archive": chart, "oci": f"oci://{registry_name}/charts", "name": "stopline"},
        "install": install,
    }
    (dist / "release.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_checksums(dist)
    log(f"stopline {version} in {dist} in {time.monotonic() - started:.0f}s (sha256sum -c SHA256SUMS there)")
    return summary


def push(dist: Path = DIST, plain_http: bool = False) -> dict[str, str]:
    """Push dist/'s images (registry API, no auth) and chart (helm push) where release.json names them;
    returns {image reference: digest}."""
    summary = json.loads((dist / "release.json").read_text())
    pushed: dict[str, str] = {}
    for image in summary["images"].values():
        digest = registry.push_layout(dist / image["archive"], image["reference"], plain_http=plain_http)
        if digest != image["digest"]:
            raise ReleaseError(f"{image['reference']} was pushed as {digest}, not {image['digest']}")
        pushed[image["reference"]] = digest
        log(f"pushed {image['reference']}@{digest}")
    chart = summary["chart"]
    run(
        [
            built_binary("helm"),
            "push",
            dist / chart["archive"],
            chart["oci"],
            *(["--plain-http"] if plain_http else []),
        ]
    )
    log(f"pushed {chart['oci']}/{chart['name']}:{summary['version']}")
    return pushed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stopline_local.release",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="write dist/ for VERSION")
    build_parser.add_argument("version", help="x.y.z")
    build_parser.add_argument("--registry", default=DEFAULT_REGISTRY, help="host[:port][/path] to push to")
    build_parser.add_argument(
        "--images", default="operator,trainer", help="operator,trainer (default) or operator (no torch base)"
    )
    build_parser.add_argument(
        "--dist", type=Path, default=DIST, help="where the artifacts go (replaced whole)"
    )
    build_parser.add_argument(
        "--build", type=Path, default=BUILD, help="the stamped sources and image builds"
    )
    push_parser = commands.add_parser("push", help="push dist/'s images and chart where release.json says")
    push_parser.add_argument("--plain-http", action="store_true", help="HTTP, not HTTPS (a local registry)")
    push_parser.add_argument("--dist", type=Path, default=DIST, help="the release to push")
    options = parser.parse_args(argv)
    try:
        if options.command == "build":
            names = [name.strip() for name in options.images.split(",") if name.strip()]
            release(options.version, options.registry, names, options.dist.resolve(), options.build.resolve())
        else:
            push(options.dist, plain_http=options.plain_http)
    except (ReleaseError, registry.PushError) as error:
        print(f"release: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
