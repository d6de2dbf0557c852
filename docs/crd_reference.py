"""Write docs/reference.md from crds/trainingjob.yaml, so the reference can never disagree with the schema.

.venv/bin/python docs/crd_reference.py > docs/reference.md
.venv/bin/python docs/crd_reference.py --check   # exit 1 when docs/reference.md is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "trainingjob.yaml"
EXAMPLE = REPO / "examples" / "gpu-patience-pvc.yaml"
REFERENCE = REPO / "docs" / "reference.md"
REGENERATE = ".venv/bin/python docs/crd_reference.py > docs/reference.md"

Schema = dict[str, Any]


@dataclass(frozen=True)
class Field:
    path: str
    schema: Schema
    required: bool


def fields(path: str, schema: Schema, required: bool = False) -> Iterator[Field]:
    """Every field under `schema`, depth first in the CRD's order; array items add `[]` to the path."""
    yield Field(path, schema, required)
    if "items" in schema:
        yield from fields_of(f"{path}[]", schema["items"])
    else:
        yield from fields_of(path, schema)


def fields_of(path: str, schema: Schema) -> Iterator[Field]:
    required = set(schema.get("required", []))
    for name, child in schema.get("properties", {}).items():
        yield from fields(f"{path}.{name}", child, name in required)


def type_of(schema: Schema) -> str:
    kind = str(schema.get("type", "")) + (" or null" if schema.get("nullable") else "")
    if kind == "array":
        return f"array of {type_of(schema['items'])}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {type_of(schema['additionalProperties'])}"
    return kind


def literal(value: Any) -> str:
    """A default or enum value as a user writes it in YAML: 15s, not "15s"; but "" stays visible."""
    return value if isinstance(value, str) and value else json.dumps(value)


def limits(schema: Schema) -> str:
    """Everything the apiserver checks on the field itself, besides its type and CEL rules."""
    found = []
    if "enum" in schema:
        found.append("one of " + ", ".join(f"`{literal(v)}`" for v in schema["enum"]))
    if "minimum" in schema:
        found.append((">" if schema.get("exclusiveMinimum") else ">=") + f" {schema['minimum']}")
    if "maximum" in schema:
        found.append((">" if schema.get("exclusiveMaximum") else "<=") + f" {schema['maximum']}")
    sizes = {
        "minLength": "length >=",
        "maxLength": "length <=",
        "minItems": "items >=",
        "maxItems": "items <=",
    }
    found += [f"{words} {schema[key]}" for key, words in sizes.items() if key in schema]
    if "pattern" in schema:
        found.append(f"matches `{schema['pattern']}`")
    if "format" in schema:
        found.append(schema["format"])
    if schema.get("x-kubernetes-list-type") == "map":
        found.append("one item per " + ", ".join(schema["x-kubernetes-list-map-keys"]))
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        found.append("other fields kept as given")
    return "; ".join(found)


def cell(text: str) -> str:
    """Markdown table cells end at a pipe, even inside backticks (patterns and rules have pipes)."""
    return text.replace("|", "\\|").replace("\n", " ")


def field_table(root: Field) -> list[str]:
    rows = ["| field | type | default | limits | required | description |", "|---|---|---|---|---|---|"]
    for field in fields(root.path, root.schema, root.required):
        default = f"`{literal(field.schema['default'])}`" if "default" in field.schema else ""
        columns = [
            f"`{field.path}`",
            type_of(field.schema),
            default,
            limits(field.schema),
            "yes" if field.required else "",
            field.schema.get("description", ""),
        ]
        rows.append("| " + " | ".join(cell(c) for c in columns) + " |")
    return rows


def validation_rules(root: Field) -> list[str]:
    lines = []
    for field in fields(root.path, root.schema, root.required):
        for rule in field.schema.get("x-kubernetes-validations", []):
            where = f" (reported at `{field.path}{rule['fieldPath']}`)" if "fieldPath" in rule else ""
            lines += [f"- `{field.path}`{where}: {rule['message']}", f"  `{rule['rule']}`"]
    return lines


def render() -> str:
    crd = yaml.safe_load(CRD.read_text())
    names = crd["spec"]["names"]
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    metadata = Field("metadata", schema["properties"]["metadata"], False)
    spec = Field("spec", schema["properties"]["spec"], "spec" in schema["required"])
    status = Field("status", schema["properties"]["status"], False)
    api_version = f"{crd['spec']['group']}/{version['name']}"
    columns = [
        "| column | type | JSONPath |",
        "|---|---|---|",
        *(f"| {c['name']} | {c['type']} | `{c['jsonPath']}` |" for c in version["additionalPrinterColumns"]),
    ]
    lines = [
        f"<!-- Generated from {CRD.relative_to(REPO)} by docs/crd_reference.py: do not edit by hand."
        f" Run: {REGENERATE} -->",
        f"# {names['kind']} reference",
        "",
        f"`apiVersion: {api_version}`, `kind: {names['kind']}` ({crd['spec']['scope'].lower()}; plural"
        f" `{names['plural']}`, short name `{', '.join(names['shortNames'])}`). {schema['description']}",
        "",
        f"Every field below comes from `{CRD.relative_to(REPO)}`, the one source of truth: the apiserver"
        " applies these defaults and rejects a spec that breaks a limit or a validation rule at"
        " `kubectl apply`, naming the field. In a criterion, an unset `metric` or `mode` is the one of"
        " `spec.objective`.",
        "",
        f"## Example (`{EXAMPLE.relative_to(REPO)}`)",
        "",
        "```yaml",
        EXAMPLE.read_text().rstrip("\n"),
        "```",
        "",
        "## Spec",
        "",
        *field_table(spec),
        "",
        "## Validation rules",
        "",
        "CEL rules (`x-kubernetes-validations`) the apiserver checks on create and update, with the message"
        " it returns; `oldSelf` is the stored object, so `self == oldSelf` makes a field immutable.",
        "",
        *validation_rules(metadata),
        *validation_rules(spec),
        "",
        "## Status",
        "",
        "Written by the operator only (the status subresource); never set it yourself.",
        "",
        *field_table(status),
        "",
        f"## Printer columns (`kubectl get {names['shortNames'][0]}`)",
        "",
        *columns,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/reference.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if not args.check:
        sys.stdout.write(text)
        return 0
    if not REFERENCE.exists() or REFERENCE.read_text() != text:
        print(f"docs/reference.md is stale: run {REGENERATE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
