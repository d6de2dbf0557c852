"""The pure parts of `make release`: what it accepts as a version and a registry, how it stamps, what it reads
as installed in an image (layers in order, whiteouts applied), and the missing registry binary named."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from stopline_local import controlplane, oci, registry, release
from stopline_local.controlplane import MissingTestenv


@pytest.mark.parametrize("version", ["0.2.0", "1.0.0", "10.20.30"])
def test_a_version_is_x_y_z(version: str) -> None:
    assert release.check_version(version) == version


@pytest.mark.parametrize("version", ["", "0.2", "v0.2.0", "0.2.0rc1", "0.2.0-rc.1", "01.2.0", "0.2.0 "])
def test_anything_else_is_refused_before_anything_is_built(version: str) -> None:
    with pytest.raises(release.ReleaseError, match=r"VERSION must be x\.y\.z"):
        release.check_version(version)


@pytest.mark.parametrize("name", ["ghcr.io/stopline-dev", "127.0.0.1:5000", "registry.example.com/a/b"])
def test_a_registry_is_host_port_and_path(name: str) -> None:
    assert release.check_registry(name) == name


@pytest.mark.parametrize("name", ["", "oci://ghcr.io/x", "GHCR.io/x", "ghcr.io/x/", "ghcr.io/x:1.0"])
def test_a_registry_with_a_scheme_case_or_tag_is_refused(name: str) -> None:
    with pytest.raises(release.ReleaseError, match="REGISTRY must be"):
        release.check_registry(name)


def test_stamp_replaces_the_one_line_and_fails_loudly_when_the_file_moved_on(tmp_path: Path) -> None:
    chart = tmp_path / "Chart.yaml"
    chart.write_text('apiVersion: v2\nversion: 0.1.0\nappVersion: "0.1.0"\n')
    release.stamp(chart, r"^version: .*$", "version: 0.2.0")
    assert chart.read_text() == 'apiVersion: v2\nversion: 0.2.0\nappVersion: "0.1.0"\n'
    with pytest.raises(release.ReleaseError, match="0 lines match"):
        release.stamp(chart, r"^kubeVersion: .*$", "kubeVersion: x")


def test_the_checkout_s_files_still_have_the_lines_a_release_stamps(tmp_path: Path) -> None:
    """The stamps run on copies of these files: a reworded line must fail here, not at release time."""
    from stopline_local.controlplane import REPO

    chart = tmp_path / "stopline"
    for name in ("Chart.yaml", "values.yaml"):
        chart.mkdir(exist_ok=True)
        (chart / name).write_text((REPO / "helm" / "stopline" / name).read_text())
    digest = "sha256:" + "a" * 64
    image = release.Image("r/operator:9.8.7", "r/operator", digest, "operator-9.8.7.oci.tar", "x.lock.txt")
    release.stamp_chart(chart, "9.8.7", image, "r")
    values = (chart / "values.yaml").read_text()
    assert "  repository: r/operator\n  # defaults" in values and f'  digest: "{digest}"' in values
    for pyproject in ("pyproject.toml", "trainer-image/pyproject.toml"):
        copy = tmp_path / pyproject.replace("/", "-")
        copy.write_text((REPO / pyproject).read_text())
        release.stamp(copy, r'^version = "[^"]*"$', 'version = "9.8.7"')


def _layer(path: Path, entries: dict[str, bytes | None]) -> Path:
    """A layer tar: a name -> its bytes (a file) or None (an empty whiteout marker)."""
    with tarfile.open(path, "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data or b""))
    return path


def _metadata(name: str, version: str) -> bytes:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nlong description\n".encode()


SITE = "opt/python/lib/python3.11/site-packages"


def test_installed_distributions_apply_the_layers_in_order_with_their_whiteouts(tmp_path: Path) -> None:
    base = _layer(
        tmp_path / "base.tar",
        {
            f"{SITE}/pip-23.0.1.dist-info/METADATA": _metadata("pip", "23.0.1"),
            f"{SITE}/setuptools-66.1.1.dist-info/METADATA": _metadata("setuptools", "66.1.1"),
            f"{SITE}/six-1.0.dist-info/METADATA": _metadata("six", "1.0"),
            "usr/lib/python3/dist-packages/debian-1.0.dist-info/METADATA": _metadata("debian", "1.0"),
        },
    )
    upper = _layer(
        tmp_path / "upper.tar",
        {
            f"{SITE}/.wh.pip-23.0.1.dist-info": None,  # pip upgraded: the old one deleted...
            f"{SITE}/pip-26.3.dist-info/METADATA": _metadata("pip", "26.3"),  # ...the new one added
            f"{SITE}/six-1.0.dist-info/.wh..wh..opq": None,  # a folder made opaque: nothing below survives
            f"{SITE}/PyYAML-6.0.4.dist-info/METADATA": _metadata("PyYAML", "6.0.4"),
        },
    )
    archive = oci.write_archive(tmp_path / "image.tar", "r/operator:1", [base, upper], oci.ImageConfig())
    assert release.installed_distributions(archive) == {
        "pip": "26.3",
        "PyYAML": "6.0.4",
        "setuptools": "66.1.1",
    }
    with tarfile.open(archive) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert registry.layout_digest(archive) == index["manifests"][0]["digest"]


@pytest.mark.parametrize(
    ("reference", "parsed"),
    [
        ("127.0.0.1:5000/operator:0.2.0", registry.Reference("127.0.0.1:5000", "operator", "0.2.0")),
        (
            "ghcr.io/stopline-dev/operator:1.0.0",
            registry.Reference("ghcr.io", "stopline-dev/operator", "1.0.0"),
        ),
    ],
)
def test_a_push_reference_is_host_repository_and_tag(reference: str, parsed: registry.Reference) -> None:
    assert registry.Reference.parse(reference) == parsed


@pytest.mark.parametrize(
    "reference", ["operator:1", "127.0.0.1:5000/operator", "r/operator@sha256:" + "a" * 64]
)
def test_a_push_needs_a_tag_at_a_host(reference: str) -> None:
    with pytest.raises(ValueError, match="not host/repository:tag"):
        registry.Reference.parse(reference)


def test_a_missing_registry_binary_names_the_make_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "REGISTRY_HOME", tmp_path)
    with pytest.raises(MissingTestenv, match=r"bin/registry is missing: run `make testenv-registry`"):
        registry.registry_binary()


def test_a_release_without_helm_names_make_testenv_before_building_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(controlplane, "TESTENV", tmp_path / "testenv")
    with pytest.raises(MissingTestenv, match=r"bin/helm is missing: run `make testenv`"):
        release.release("1.2.3", dist=tmp_path / "dist", build=tmp_path / "build")
    assert not (tmp_path / "build").exists() and not (tmp_path / "dist").exists()
