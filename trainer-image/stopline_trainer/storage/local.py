"""Checkpoints on a mounted volume: temp file, fsync, rename, fsync of the folder."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from . import Fill

TMP_PREFIX = ".tmp-"
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

    def _atomic(self, name: str, write: Callable[[BinaryIO], object]) -> None:
        """The rename is the commit; the folder fsync makes the rename itself survive a power loss."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}"  # unique across writers, unlike a pid
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dfd = os.open(self.folder, os.O_RDONLY)
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
