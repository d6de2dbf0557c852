"""Fixtures of the trainer tier: the example trainer as a real process, and a real S3 server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stopline_local.s3server import S3Server, running_s3_server

from .support import TrainerProcess

StartTrainer = Callable[..., TrainerProcess]


@pytest.fixture
def start_trainer(tmp_path: Path) -> Iterator[StartTrainer]:
    """start_trainer(*flags, env={...}, name="rank0") -> TrainerProcess; all are killed at teardown."""
    started: list[TrainerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, name: str = "trainer") -> TrainerProcess:
        t = TrainerProcess(tmp_path, list(args), env or {}, name)
        started.append(t)
        return t

    yield start
    for t in started:
        if t.proc.poll() is None:
            t.proc.kill()
            t.proc.wait()


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[S3Server]:
    with running_s3_server(tmp_path) as server:
        yield server
