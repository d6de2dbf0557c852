"""The page `stopline replay --html` and `stopline study --html` write, read back by tests of any tier."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest


class Page(HTMLParser):
    """The elements a test reads: each sweep's figures, curves, stop and resume marks and the jobs drawn as
    running, by section."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.figures: dict[str, dict[str, Any]] = {}
        self.sections: dict[str, dict[str, list[dict[str, str]]]] = {}
        self.section: str | None = None
        self.tags: set[str] = set()
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        self.tags.add(tag)
        if tag == "section":
            self.section = found["id"]
            self.sections[self.section] = {"curves": [], "stops": [], "resumed": [], "running": []}
        if tag == "dl" and "figures" in found.get("class", ""):
            self.figures[found["id"]] = {
                name.removeprefix("data-"): json.loads(value)
                for name, value in found.items()
                if name.startswith("data-")
            }
        classes = found.get("class", "").split()
        if self.section is not None:
            kinds = (("curves", "run"), ("stops", "stop"), ("resumed", "resumed"), ("running", "running"))
            for kind, wanted in kinds:
                if wanted in classes:
                    self.sections[self.section][kind].append(found)


def chromium() -> str:
    """Debian's chromium; CI installs it (.ci/run), so there a missing browser fails instead of skipping."""
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium on PATH: .ci/run installs Debian's chromium for this test")
        pytest.skip("no chromium on PATH: apt-get install chromium (Debian's) to render the page")
    return found


def dom_in_chromium(page: Path, profile: Path) -> str:
    """The page's DOM as Debian's headless Chromium renders it from the file, with networking off."""
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # networking off: no name resolves,
            "--proxy-server=127.0.0.1:9",  # and any connection goes to a closed port
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
