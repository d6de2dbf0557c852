"""Checkpoints on a mounted volume: temp file, fsync, rename, fsync of the folder."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from . import Fill

TMP_PREFIX = ".tmp-"
CHUNK = 1 << 20
_TEMP = re.compile(r"\.tmp-[0-9a-f]{32}-(?P<target>.+)")


def temp_target(name: str) -> str | None:
    """The name a temp file was going to be renamed to, or None when `name` is no temp file of ours."""
    match = _TEMP.fullmatch(name)
    return match["target"] if match else None


class LocalStore:
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder).absolute()

    def uri(self, name: str) -> str:
        return str(self.folder / name)

    def write_blob(self, name: str, fill: Fill, midway: Callable[[], None]) -> None:
        self._atomic(name, lambda f: fill(_Midway(f, midway)))  # type: ignore[arg-type]

    def write_small(self, name: str, data: bytes) -> None:
        self._atomic(name, lambda f: f.write(data))

    def read_small(self, name: str) -> bytes | None:
        try:
            return (self.folder / name).read_bytes()
        except FileNotFoundError:
            return None

    def read_blob(self, name: str) -> AbstractContextManager[BinaryIO]:
        return open(self.folder / name, "rb")

    def names(self) -> Iterator[str]:
        if self.folder.is_dir():
            yield from (p.name for p in self.folder.iterdir() if p.is_file())

    def delete(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def put_file(self, name: str, source: Path) -> tuple[int, str]:
        """A plain copy, fsynced: the folder it is staged in is renamed into place by commit_folder."""
        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        h, size = hashlib.sha256(), 0
        with open(source, "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        return size, h.hexdigest()

    def local_path(self, name: str) -> Path | None:
        return self.folder / name

    def download(self, name: str, target: Path) -> None:
        shutil.copyfile(self.folder / name, target)

    def staging(self, name: str, token: str) -> str:
        return f"{TMP_PREFIX}{token}-{name}"  # a temp name: garbage collection knows whose it is

    def commit_folder(self, staging: str, name: str) -> None:
        """Every file and folder of the staged tree fsynced, then one rename makes it appear whole."""
        staged = self.folder / staging
        for path in sorted(staged.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                _fsync_folder(path)
        _fsync_folder(staged)
        os.replace(staged, self.folder / name)
        _fsync_folder(self.folder)

    def folders(self) -> Iterator[str]:
        if self.folder.is_dir():
            yield from (p.name for p in self.folder.iterdir() if p.is_dir() and not p.is_symlink())

    def delete_folder(self, name: str) -> None:
        shutil.rmtree(self.folder / name, ignore_errors=True)

    def _atomic(self, name: str, write: Callable[[BinaryIO], object]) -> None:
        """The rename is the commit; the folder fsync makes the rename itself survive a power loss."""
        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}-{target.name}"  # unique across writers
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_folder(target.parent)


def _fsync_folder(folder: Path) -> None:
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class _Midway:
    """Passes writes through; after the first one lands on disk, runs the fault-injection hook once."""

    def __init__(self, f: BinaryIO, hook: Callable[[], None]) -> None:
        self._f = f
        self._hook: Callable[[], None] | None = hook

    def write(self, data: bytes) -> int:
        n = self._f.write(data)
        if self._hook is not None:
            hook, self._hook = self._hook, None
            self._f.flush()
            hook()
        return n

    def flush(self) -> None:
        self._f.flush()
