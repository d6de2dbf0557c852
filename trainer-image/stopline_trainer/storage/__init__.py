"""Where checkpoints go: a folder (a mounted PVC) or an s3:// prefix, behind one small interface."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol

Fill = Callable[[BinaryIO], None]
"""Writes a blob's whole content into the stream it is given."""


class Store(Protocol):
    """Names under one prefix. write_blob and write_small are atomic: a reader sees all or nothing.

    A checkpoint of files (Checkpointer.register) is a folder: its files are put under a staging name,
    then its manifest, then commit_folder makes it appear under its own name (a rename on a volume; on an
    object store the staging name is the name itself, and the manifest, written last, is the commit).
    """

    def uri(self, name: str) -> str: ...

    def write_blob(self, name: str, fill: Fill, midway: Callable[[], None]) -> None:
        """Write a large object; midway() runs once the object is partly written (fault injection)."""
        ...

    def write_small(self, name: str, data: bytes) -> None: ...

    def read_small(self, name: str) -> bytes | None: ...

    def read_blob(self, name: str) -> AbstractContextManager[BinaryIO]: ...

    def names(self) -> Iterator[str]: ...

    def delete(self, name: str) -> None: ...

    def put_file(self, name: str, source: Path) -> tuple[int, str]:
        """Copy a local file to `name` (which may hold folders), hashing it on the way: (bytes, sha256)."""
        ...

    def local_path(self, name: str) -> Path | None:
        """Where `name` is on this machine's filesystem (a volume); None on an object store."""
        ...

    def download(self, name: str, target: Path) -> None:
        """Copy `name` into the local file `target`."""
        ...

    def staging(self, name: str, token: str) -> str:
        """Where the files of folder `name` are put before commit_folder (token: 32 hex digits)."""
        ...

    def commit_folder(self, staging: str, name: str) -> None:
        """Make the staged folder durable under `name`."""
        ...

    def folders(self) -> Iterator[str]:
        """The folders directly under the prefix."""
        ...

    def delete_folder(self, name: str) -> None: ...


def open_store(uri: str, *, s3_part_size: int) -> Store:
    """s3://bucket/prefix for an object store; a path or file:// URI for a mounted volume."""
    if uri.startswith("s3://"):
        from ..extras import require

        require("s3", "boto3", f"the checkpoint target {uri}")
        from .s3 import S3Store  # boto3 is an optional extra: imported only when used

        return S3Store.from_uri(uri, part_size=s3_part_size)
    from .local import LocalStore

    return LocalStore(uri.removeprefix("file://"))
