"""The page `stopline replay --html` and `stopline study --html` write, read back by tests of any tier."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any


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
