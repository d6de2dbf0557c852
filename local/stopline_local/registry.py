"""A real OCI registry on 127.0.0.1, and a pusher of OCI image-layout archives to any registry without auth.

The registry is the CNCF distribution registry (`registry serve`, github.com/distribution/distribution/v3)
that `make testenv-registry` builds (testenv/build.sh registry), on a free loopback port, storing blobs in a
folder it is given, stopped when the block ends:

    with running_registry(tmp_path) as registry:             # registry.host == "127.0.0.1:PORT"
        digest = push_layout(Path("dist/operator-0.2.0.oci.tar"), f"{registry.host}/operator:0.2.0")
        manifest(registry.host, "operator", digest)           # the bytes the registry serves for that digest

No skopeo or crane here: `push_layout` speaks the distribution API (v2) itself, blobs first (HEAD, then
a monolithic POST + PUT upload), the manifest last, and checks that the registry names the manifest by the
digest the archive gives it: what a pull by digest will then fetch.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin

import requests

from stopline_local.controlplane import MissingTestenv, die_with_parent, free_port, stop_process, wait_until
from stopline_local.oci import MANIFEST

REGISTRY_VERSION = os.environ.get("REGISTRY_VERSION", "3.1.2")
REGISTRY_HOME = Path(
    os.environ.get(
        "STOPLINE_REGISTRY", Path.home() / ".cache" / "stopline" / "registry" / f"v{REGISTRY_VERSION}"
    )
)
TIMEOUT_S = 60.0  # one HTTP request; a blob of a few hundred MB to loopback takes seconds


class PushError(RuntimeError):
    """The registry refused a blob or the manifest, or named the manifest by another digest."""


def registry_binary() -> Path:
    path = REGISTRY_HOME / "bin" / "registry"
    if not os.access(path, os.X_OK):
        raise MissingTestenv(f"{path} is missing: run `make testenv-registry` (it builds the registry once)")
    return path


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT, as an image reference or `oci://` names it
    storage: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def _serving(url: str) -> bool:
    return requests.get(f"{url}/v2/", timeout=2).status_code == 200


@contextmanager
def running_registry(workdir: Path, deadline_s: float = 30.0) -> Iterator[Registry]:
    """Start the registry on a free loopback port over workdir/storage; stop it even when the block raises."""
    binary = registry_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "registry-storage"
    storage.mkdir()
    host = f"127.0.0.1:{free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": host},  # no debug server: nothing but this one port
    }
    config_path = workdir / "registry.json"  # YAML's superset: the registry reads JSON too
    config_path.write_text(json.dumps(config))
    log_path = workdir / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(binary), "serve", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    registry = Registry(host, storage, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(
                f"the registry exited with {process.returncode}: {log_path.read_text()[-2000:]}"
            )
        return _serving(registry.url)

    try:
        wait_until(
            ready,
            deadline_s,
            f"the registry on {host}",
            retry_on=(requests.ConnectionError, requests.Timeout),
            details=lambda: log_path.read_text()[-2000:],
        )
        yield registry
    finally:
        stop_process(process, 10)


@dataclass(frozen=True)
class Reference:
    """host/repository:tag, as an image reference names a pushed image."""

    host: str
    repository: str
    tag: str

    @classmethod
    def parse(cls, reference: str) -> Reference:
        host, _, rest = reference.partition("/")
        repository, _, tag = rest.rpartition(":")
        if not host or not repository or not tag or "@" in reference:
            raise ValueError(f"not host/repository:tag: {reference!r}")
        return cls(host, repository, tag)


def _member(tar: tarfile.TarFile, digest: str) -> IO[bytes]:
    algorithm, _, hexdigest = digest.partition(":")
    try:
        stream = tar.extractfile(f"blobs/{algorithm}/{hexdigest}")
    except KeyError:
        stream = None
    if stream is None:
        raise PushError(f"{tar.name!r} has no blob {digest}")
    return stream


def layout_manifest(archive: Path) -> tuple[dict[str, Any], bytes]:
    """The one image descriptor of an OCI image-layout tar's index.json, and its manifest's bytes."""
    with tarfile.open(archive) as tar:
        index_file = tar.extractfile("index.json")
        if index_file is None:
            raise PushError(f"{archive} has no index.json: not an OCI image layout")
        manifests = json.load(index_file)["manifests"]
        if len(manifests) != 1:
            raise PushError(f"{archive} holds {len(manifests)} images; one expected")
        descriptor: dict[str, Any] = manifests[0]
        data = _member(tar, descriptor["digest"]).read()
    if f"sha256:{hashlib.sha256(data).hexdigest()}" != descriptor["digest"]:
        raise PushError(f"{archive}: the manifest's bytes do not hash to {descriptor['digest']}")
    return descriptor, data


def layout_digest(archive: Path) -> str:
    """The digest of the image in an OCI image-layout tar: what a pull by digest names."""
    return str(layout_manifest(archive)[0]["digest"])


def _check(response: requests.Response, what: str) -> requests.Response:
    if response.status_code >= 300:
        raise PushError(f"{what}: {response.status_code} {response.text[:500]}")
    return response


def _push_blob(
    session: requests.Session, base: str, tar: tarfile.TarFile, repository: str, blob: dict[str, Any]
) -> None:
    digest, size = str(blob["digest"]), int(blob["size"])
    if session.head(f"{base}/v2/{repository}/blobs/{digest}", timeout=TIMEOUT_S).status_code == 200:
        return  # already there (a layer two images share)
    started = _check(
        session.post(f"{base}/v2/{repository}/blobs/uploads/", timeout=TIMEOUT_S),
        f"starting {digest}'s upload",
    )
    location = urljoin(f"{base}/", started.headers["Location"])
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    stream = _member(tar, digest)
    _check(
        session.put(location, params={"digest": digest}, data=stream, headers=headers, timeout=TIMEOUT_S),
        f"uploading {digest} ({size} bytes)",
    )


def push_layout(archive: Path, reference: str, plain_http: bool = True) -> str:
    """Push the image of the OCI image-layout tar `archive` as `reference` (host/repository:tag); returns its
    digest, once the registry has named the manifest by the same one."""
    target = Reference.parse(reference)
    base = f"{'http' if plain_http else 'https'}://{target.host}"
    descriptor, data = layout_manifest(archive)
    manifest_json = json.loads(data)
    with requests.Session() as session, tarfile.open(archive) as tar:
        for blob in [manifest_json["config"], *manifest_json["layers"]]:
            _push_blob(session, base, tar, target.repository, blob)
        media_type = str(manifest_json.get("mediaType") or descriptor.get("mediaType") or MANIFEST)
        response = _check(
            session.put(
                f"{base}/v2/{target.repository}/manifests/{target.tag}",
                data=data,
                headers={"Content-Type": media_type},
                timeout=TIMEOUT_S,
            ),
            f"putting the manifest of {reference}",
        )
    digest = response.headers.get("Docker-Content-Digest", "")
    if digest != descriptor["digest"]:
        raise PushError(
            f"{reference}: the registry named the manifest {digest!r}, not {descriptor['digest']}"
        )
    return digest


def manifest(host: str, repository: str, reference: str, plain_http: bool = True) -> bytes:
    """The manifest the registry serves for `reference` (a tag or a digest), checked against a digest."""
    base = f"{'http' if plain_http else 'https'}://{host}"
    response = _check(
        requests.get(
            f"{base}/v2/{repository}/manifests/{reference}",
            headers={"Accept": MANIFEST},
            timeout=TIMEOUT_S,
        ),
        f"getting {host}/{repository}@{reference}",
    )
    if (
        reference.startswith("sha256:")
        and f"sha256:{hashlib.sha256(response.content).hexdigest()}" != reference
    ):
        raise PushError(f"{host}/{repository}: the manifest served for {reference} hashes to something else")
    return response.content
