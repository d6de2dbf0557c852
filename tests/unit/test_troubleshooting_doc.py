"""docs/troubleshooting.md names every word a user sees on a TrainingJob and every alert of the chart."""

from __future__ import annotations

import re
from pathlib import Path

from stopline import vocabulary
from stopline.criteria.decision import REASON_TYPES

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "troubleshooting.md").read_text()


def test_every_phase_condition_reason_and_event_reason_is_explained() -> None:
    words = {
        value
        for name, value in vars(vocabulary).items()
        if name.isupper() and isinstance(value, str) and re.fullmatch(r"[A-Z][A-Za-z]+", value)
    }
    assert {"ClaimNotFound", "ScrapeFailed", "StopNotAcknowledged", "GracePeriodExpired"} <= words
    missing = sorted(word for word in words | set(REASON_TYPES) if f"`{word}`" not in DOC)
    assert missing == []


def test_every_alert_of_the_chart_has_its_section_for_the_runbook_link() -> None:
    rules = (REPO / "helm" / "stopline" / "templates" / "prometheusrule.yaml").read_text()
    alerts = re.findall(r"- alert: (\w+)", rules)
    assert len(alerts) == 5
    headings = set(re.findall(r"^### (\w+)$", DOC, re.MULTILINE))
    assert set(alerts) <= headings
    for alert in alerts:  # the anchor the rule's runbook_url points at
        assert f"#{alert.lower()}" in rules
