"""OCI image archives written by hand: no registry can be reached here and no Docker engine runs, so every
image the local node runs (the pause sandbox, CoreDNS, the operator, the trainer) is assembled from files
and imported with `ctr images import`.

    layer = tar_layer(work / "layer.tar", {"/pause": bin / "pause"})
    write_archive(work / "pause.tar", "stopline.local/pause:1", [layer], ImageConfig(entrypoint=["/pause"]))

Layers are uncompressed tars (containerd unpacks them as they are; compressing a 1 GB torch layer would only
cost time on one machine). Entries are sorted, owned by root unless the rootfs says otherwise, with their
modification times kept, so the same tree gives the same digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

LAYER = "application/vnd.oci.image.layer.v1.tar"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CHUNK = 1 << 20


@dataclass
class ImageConfig:
    """The image's `config` (what a Dockerfile's ENV, WORKDIR, USER, ENTRYPOINT, CMD and EXPOSE set)."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=lambda: {"PATH": DEFAULT_PATH})
    workdir: str = "/"
    user: str = ""
    exposed_ports: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        config: dict[str, object] = {
            "Env": [f"{key}={value}" for key, value in self.env.items()],
            "WorkingDir": self.workdir,
        }
        if self.entrypoint:
            config["Entrypoint"] = self.entrypoint
        if self.cmd:
            config["Cmd"] = self.cmd
        if self.user:
            config["User"] = self.user
        if self.exposed_ports:
            config["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        return config


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def tar_layer(out: Path, files: Mapping[str, Path]) -> Path:
    """A layer holding `files` (path in the image -> file here), each with its mode, owned by root; the
    folders above them are made 0755."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        folders: set[str] = set()
        for target in sorted(files):
            parts = target.strip("/").split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in folders:
                    folders.add(folder)
                    info = tarfile.TarInfo(folder)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            source = files[target]
            info = tar.gettarinfo(str(source), arcname="/".join(parts))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with source.open("rb") as stream:
                tar.addfile(info, stream)
    return out


def rootfs_layer(out: Path, rootfs: Path) -> Path:
    """A layer holding the whole tree `rootfs` as it is on disk (owners, modes, links, device-less)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for folder, subfolders, names in os.walk(rootfs):
            subfolders.sort()
            for name in sorted(subfolders + names):
                path = Path(folder) / name
                mode = path.lstat().st_mode
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
                    continue  # the runtime makes /dev; a build's sockets and pipes mean nothing in an image
                tar.add(path, arcname=str(path.relative_to(rootfs)), recursive=False)
    return out


def _blob(blobs: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _file_blob(blobs: Path, layer: Path) -> dict[str, object]:
    sha = hashlib.sha256()
    with layer.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            sha.update(chunk)
    target = blobs / sha.hexdigest()
    if not target.exists():
        try:
            os.link(layer, target)  # a torch layer is gigabytes: no second copy
        except OSError:
            shutil.copyfile(layer, target)
    return {"digest": f"sha256:{sha.hexdigest()}", "size": layer.stat().st_size}


def write_archive(out: Path, name: str, layers: list[Path], config: ImageConfig) -> Path:
    """An OCI image-layout tar of `layers` (bottom first) named `name`, for `ctr images import`."""
    work = out.with_name(out.name + ".d")
    shutil.rmtree(work, ignore_errors=True)
    blobs = work / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layer_blobs = [{"mediaType": LAYER, **_file_blob(blobs, layer)} for layer in layers]
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config.as_json(),
        "rootfs": {"type": "layers", "diff_ids": [blob["digest"] for blob in layer_blobs]},
    }
    config_blob = {"mediaType": CONFIG, **_blob(blobs, json.dumps(image_config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config_blob, "layers": layer_blobs}
    manifest_blob = _blob(blobs, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {
                "mediaType": MANIFEST,
                **manifest_blob,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rpartition(":")[2],
                },
            }
        ],
    }
    (work / "index.json").write_text(json.dumps(index))
    (work / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        for path in sorted(work.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(work)), recursive=False)
    tmp.replace(out)
    shutil.rmtree(work)
    return out
