"""The trainer's settings: the control token is never shown, and child processes never inherit it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stopline_trainer import Config, config

pytestmark = pytest.mark.trainer

SECRET = "tok-SECRET-0123456789"


def test_the_token_is_not_in_the_repr() -> None:
    settings = Config.from_env({"STOPLINE_JOB": "mlp", "STOPLINE_CONTROL_TOKEN": SECRET})
    assert settings.control_token == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert "job='mlp'" in repr(settings)


def test_reading_the_process_environment_takes_the_token_out_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_taken_token", "")  # no earlier test's token
    monkeypatch.setenv("STOPLINE_CONTROL_TOKEN", SECRET)
    monkeypatch.setenv("STOPLINE_JOB", "mlp")

    assert Config.from_env().control_token == SECRET
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('STOPLINE_CONTROL_TOKEN'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "None"  # a DataLoader worker or tracker started now never sees it
    again = Config.from_env()  # e.g. start() without a config after the user read one
    assert (again.control_token, again.job) == (SECRET, "mlp")
