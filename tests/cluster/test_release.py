"""`make release` as a platform engineer receives it: dist/ checked, pushed to a real OCI registry (the
distribution registry on 127.0.0.1), then installed from there both ways the README gives, each into a real
apiserver, each Deployment pulling the operator image by the digest dist/ names.

The release runs once for the module (the operator image only: the trainer's torch base is gigabytes), into
temporary folders, with the registry's address as REGISTRY so the chart and install.yaml name it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from stopline_local import registry, release
from stopline_local.controlplane import REPO, ControlPlane, built_binary
from stopline_local.registry import Registry, running_registry

pytestmark = pytest.mark.cluster

VERSION = "9.8.7"  # a version the checkout never names: stamped into the checkout, it would show
# warm about a minute; cold the image's Debian base first (debootstrap, ~2.5 min). Below pytest's 600 s for
# the test whose setup runs it.
RELEASE_TIMEOUT_S = 540
# what a release stamps, in its build folder only (checked by content: others may edit the checkout meanwhile)
STAMPED = [
    "pyproject.toml",
    "trainer-image/pyproject.toml",
    "helm/stopline/Chart.yaml",
    "helm/stopline/values.yaml",
]


@dataclass(frozen=True)
class Released:
    dist: Path
    summary: dict[str, Any]
    registry: Registry
    seconds: float

    @property
    def operator(self) -> dict[str, str]:
        image: dict[str, str] = self.summary["images"]["operator"]
        return image

    @property
    def pinned(self) -> str:
        """The operator image as the chart and install.yaml must name it."""
        return f"{self.operator['repository']}@{self.operator['digest']}"


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as started:
        yield started
    shutil.rmtree(started.storage)  # an image of ~300 MB: not kept with pytest's last three runs


@pytest.fixture(scope="module")
def released(local_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Released]:
    if os.geteuid() != 0:
        pytest.skip(
            "the release builds the operator image as `make images` does: an overlay mount and chroot, root"
        )
    dist, build = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("build")
    command = [
        sys.executable,
        "-m",
        "stopline_local.release",
        "build",
        VERSION,
        f"--registry={local_registry.host}",
        "--images=operator",
        f"--dist={dist}",
        f"--build={build}",
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=RELEASE_TIMEOUT_S, check=False)
    seconds = time.monotonic() - started
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    print(f"release: {VERSION} (operator image only) in {seconds:.0f}s", flush=True)
    assert "the trainer image is left out" in result.stdout  # said, not silent
    for path in STAMPED:
        text = (REPO / path).read_text()
        assert VERSION not in text and local_registry.host not in text, f"the release wrote {path}"
    summary = json.loads((dist / "release.json").read_text())
    yield Released(dist, summary, local_registry, seconds)
    shutil.rmtree(dist)
    shutil.rmtree(build)


@pytest.fixture(scope="module")
def pushed(released: Released) -> Released:
    """`make release-push PLAIN_HTTP=1`: the images through the registry API, the chart by `helm push`."""
    command = [
        sys.executable,
        "-m",
        "stopline_local.release",
        "push",
        "--plain-http",
        f"--dist={released.dist}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert f"pushed oci://{released.registry.host}/charts/stopline:{VERSION}" in result.stdout
    return released


def helm(*args: str | Path) -> str:
    result = subprocess.run(
        [str(built_binary("helm")), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"helm {' '.join(map(str, args))}: {result.stderr}"
    return result.stdout


def test_dist_holds_every_artifact_of_the_version_checksummed(released: Released) -> None:
    dist = released.dist
    listed = {}
    for line in (dist / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    assert set(listed) == {path.name for path in dist.iterdir()} - {"SHA256SUMS"}
    for name, digest in listed.items():
        assert hashlib.sha256((dist / name).read_bytes()).hexdigest() == digest, name
    assert {
        f"stopline-{VERSION}-py3-none-any.whl",
        f"stopline-{VERSION}.tar.gz",
        f"stopline_trainer-{VERSION}-py3-none-any.whl",
        f"stopline_trainer-{VERSION}.tar.gz",
        f"stopline-{VERSION}.tgz",
        f"operator-{VERSION}.oci.tar",
        f"operator-{VERSION}.lock.txt",
        "install.yaml",
        "release.json",
    } <= set(listed)
    assert released.summary["left_out"] == ["trainer image (--images operator)"]
    distributions = [dist / name for name in released.summary["distributions"]]
    subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, distributions)], check=True)


def test_the_one_version_reaches_the_wheels_the_chart_and_the_image(released: Released) -> None:
    dist = released.dist
    for wheel, name in [("stopline", "stopline"), ("stopline_trainer", "stopline-trainer")]:
        with zipfile.ZipFile(dist / f"{wheel}-{VERSION}-py3-none-any.whl") as wheel_zip:
            metadata = wheel_zip.read(f"{wheel}-{VERSION}.dist-info/METADATA").decode()
        assert f"Name: {name}\n" in metadata and f"Version: {VERSION}\n" in metadata
    with tarfile.open(dist / f"stopline-{VERSION}.tgz") as chart:
        chart_yaml = yaml.safe_load(chart.extractfile("stopline/Chart.yaml").read())  # type: ignore[union-attr]
        values = yaml.safe_load(chart.extractfile("stopline/values.yaml").read())  # type: ignore[union-attr]
        assert "stopline/crds/trainingjob.yaml" in chart.getnames()
    assert (chart_yaml["version"], chart_yaml["appVersion"]) == (VERSION, VERSION)
    operator = released.operator
    assert values["image"] == {
        "repository": f"{released.registry.host}/operator",
        "tag": VERSION,
        "digest": operator["digest"],
        "pullPolicy": "IfNotPresent",
    }
    archive = dist / operator["archive"]
    assert registry.layout_digest(archive) == operator["digest"]
    assert operator["reference"] == f"{released.registry.host}/operator:{VERSION}"
    installed = release.installed_distributions(archive)
    assert installed["stopline"] == VERSION  # the image runs this release's operator


def test_the_lock_pins_every_distribution_in_the_image_with_a_hash(released: Released) -> None:
    operator = released.operator
    installed = {
        release.canonical(name): version
        for name, version in release.installed_distributions(released.dist / operator["archive"]).items()
    }
    locked: dict[str, str] = {}
    text = (released.dist / operator["lock"]).read_text()
    for requirement in text.replace("\\\n", " ").splitlines():
        if not requirement.strip() or requirement.startswith("#"):
            continue
        pin, _, hashes = requirement.partition(" ")
        name, _, version = pin.partition("==")
        assert hashes.split() and all(item.startswith("--hash=sha256:") for item in hashes.split()), (
            requirement
        )
        locked[name] = version
    assert locked == {name: version for name, version in installed.items() if name != "stopline"}
    # the operator's own dependencies (pyproject.toml and its s3 extra) are among them
    assert {"kopf", "kubernetes-asyncio", "aiohttp", "prometheus-client", "pyyaml", "boto3"} <= set(locked)


def _deployment_image(plane: ControlPlane, namespace: str) -> str:
    found = plane.kubectl("get", "deployment", "stopline", "-n", namespace, "-o", "json").stdout
    (container,) = json.loads(found)["spec"]["template"]["spec"]["containers"]
    return str(container["image"])


def _served_by_digest(released: Released) -> None:
    digest = released.operator["digest"]
    served = json.loads(registry.manifest(released.registry.host, "operator", digest))
    with tarfile.open(released.dist / released.operator["archive"]) as archive:
        blob = archive.extractfile(f"blobs/sha256/{digest.partition(':')[2]}")
        assert blob is not None
        assert served == json.loads(blob.read())


def test_helm_install_from_the_registry_pins_the_operator_image_by_digest(
    pushed: Released, control_plane: ControlPlane
) -> None:
    namespace = f"rel-{uuid.uuid4().hex[:8]}"
    chart = f"oci://{pushed.registry.host}/charts/stopline"
    kubeconfig = f"--kubeconfig={control_plane.kubeconfig}"
    helm(kubeconfig, "install", "stopline", chart, "--version", VERSION, "--plain-http", "-n", namespace,
         "--create-namespace")  # fmt: skip
    try:
        assert _deployment_image(control_plane, namespace) == pushed.pinned
        listed = json.loads(helm(kubeconfig, "list", "-n", namespace, "-o", "json"))
        assert [(item["chart"], item["app_version"]) for item in listed] == [(f"stopline-{VERSION}", VERSION)]
        _served_by_digest(pushed)
    finally:
        helm(kubeconfig, "uninstall", "stopline", "-n", namespace, "--wait")
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def fresh_plane() -> Iterator[ControlPlane]:
    """An apiserver of its own: install.yaml names its namespace and cluster-wide objects after `stopline`."""
    plane = ControlPlane(with_controller_manager=False).start()
    try:
        yield plane
    finally:
        plane.stop()


def test_kubectl_apply_of_install_yaml_pins_the_operator_image_by_digest(
    pushed: Released, fresh_plane: ControlPlane
) -> None:
    install = pushed.dist / "install.yaml"
    kinds = [doc["kind"] for doc in yaml.safe_load_all(install.read_text()) if doc]
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"]
    assert {"ClusterRole", "ClusterRoleBinding", "ServiceAccount", "Deployment"} <= set(kinds)
    for _ in range(2):  # applied again, as an upgrade applies it: no conflict
        fresh_plane.kubectl("apply", "--server-side", "-f", str(install))
    assert _deployment_image(fresh_plane, release.NAMESPACE) == pushed.pinned
    established = fresh_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/trainingjobs.stopline.dev"
    )
    assert "condition met" in established.stdout
    _served_by_digest(pushed)


def test_a_push_names_each_image_by_the_digest_dist_gives_it(released: Released, tmp_path: Path) -> None:
    """The pusher against the registry: a tag of another repository, the manifest served by digest; an
    archive whose manifest does not hash to its index's digest is refused before anything is sent."""
    archive = released.dist / released.operator["archive"]
    digest = registry.push_layout(archive, f"{released.registry.host}/elsewhere/operator:again")
    assert digest == released.operator["digest"]
    registry.manifest(released.registry.host, "elsewhere/operator", digest)
    tampered = tmp_path / "tampered.oci.tar"
    claimed = "sha256:" + hashlib.sha256(b'{"schemaVersion": 2}').hexdigest()
    with tarfile.open(tampered, "w") as target:
        for name, data in [
            ("index.json", json.dumps({"schemaVersion": 2, "manifests": [{"digest": claimed}]}).encode()),
            (f"blobs/sha256/{claimed.partition(':')[2]}", b'{"schemaVersion": 2, "layers": []}'),
        ]:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    with pytest.raises(registry.PushError, match="do not hash"):
        registry.push_layout(tampered, f"{released.registry.host}/tampered:1")


PINNED = f"sha256:{'b' * 64}"


@pytest.mark.parametrize(
    ("values", "image"),
    [
        pytest.param([], "ghcr.io/stopline-dev/operator:0.1.0", id="tag"),
        pytest.param(
            ["--set", f"image.digest={PINNED}"], f"ghcr.io/stopline-dev/operator@{PINNED}", id="digest"
        ),
    ],
)
def test_the_chart_pulls_by_digest_when_one_is_set(values: list[str], image: str) -> None:
    only = ["--show-only", "templates/deployment.yaml", "--set", "image.tag=0.1.0"]
    (deployment,) = yaml.safe_load_all(
        helm("template", "stopline", REPO / "helm" / "stopline", *only, *values)
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image


@pytest.mark.parametrize("digest", ["sha256:abc", "latest", f"sha512:{'b' * 128}", f"sha256:{'B' * 64}"])
def test_the_values_schema_refuses_a_digest_that_is_not_sha256_hex(digest: str) -> None:
    result = subprocess.run(
        [str(built_binary("helm")), "template", "stopline", str(REPO / "helm" / "stopline"), "--set",
         f"image.digest={digest}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "image.digest" in result.stderr
