"""docs/reference.md is generated from the CRD: it must be current, and it must name every spec field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from scripts import load_script

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "docs" / "crd_reference.py"
REFERENCE = REPO / "docs" / "reference.md"
CRD = REPO / "crds" / "trainingjob.yaml"


def load_generator() -> ModuleType:
    """docs/ is no package: load the script from its path, as `python docs/crd_reference.py` would."""
    return load_script(GENERATOR, "crd_reference")


def spec_paths(path: str, schema: dict[str, Any]) -> Iterator[str]:
    """The CRD's spec fields walked here on their own, so a generator that skips a branch is caught."""
    yield path
    if "items" in schema:
        path, schema = f"{path}[]", schema["items"]
    for name, child in schema.get("properties", {}).items():
        yield from spec_paths(f"{path}.{name}", child)


def test_reference_is_current() -> None:
    expected = load_generator().render()
    assert REFERENCE.read_text() == expected, (
        "docs/reference.md is stale: run .venv/bin/python docs/crd_reference.py > docs/reference.md"
    )


def test_reference_names_every_spec_field() -> None:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    paths = list(spec_paths("spec", spec))
    assert "spec.criteria[].patience.minDelta" in paths  # the walk itself reaches into array items
    text = REFERENCE.read_text()
    missing = [path for path in paths if f"| `{path}` |" not in text]
    assert not missing, f"docs/reference.md has no row for {missing}"
