"""The chart's PrometheusRule, as `helm template` renders it, run by `promtool test rules` (Debian's
Prometheus package, from the testenv) over input series: each alert fires when it should, and stays quiet
on a healthy operator. No apiserver: seconds."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stopline_local.controlplane import REPO, built_binary

pytestmark = pytest.mark.cluster

CHART = REPO / "helm" / "stopline"
RELEASE, NAMESPACE = "stopline", "stopline-system"
SELECTOR = 'job="stopline"'  # the chart's default: the job the ServiceMonitor's targets get
OPERATOR = f'{SELECTOR}, instance="10.0.0.1:8080"'
FOLLOWER = f'{SELECTOR}, instance="10.0.0.2:8080"'
LOST = f'{OPERATOR}, namespace="team-a", reason="GracePeriodExpired"'
BUCKETS = ("1", "5", "10", "+Inf")


def render(*values: str) -> dict[str, Any]:
    """The PrometheusRule the chart renders with these values."""
    only = [
        "--show-only",
        "templates/prometheusrule.yaml",
        *("--set", "prometheusRule.enabled=true,serviceMonitor.enabled=true"),
    ]
    result = subprocess.run(
        [str(built_binary("helm")), "template", RELEASE, str(CHART), "-n", NAMESPACE, *only, *values],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (rule,) = yaml.safe_load_all(result.stdout)
    assert rule["kind"] == "PrometheusRule"
    return dict(rule)


def alerts_of(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["alert"]: entry for group in rule["spec"]["groups"] for entry in group["rules"]}


def promtool(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(built_binary("promtool")), *args], cwd=folder, capture_output=True, text=True, timeout=60
    )


def expanded(annotations: dict[str, str], labels: dict[str, str]) -> dict[str, str]:
    """The annotations as Prometheus fills them in: `{{ $labels.x }}` is the alert's label x."""
    return {
        key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda match: labels[match.group(1)], text)
        for key, text in annotations.items()
    }


def histogram(per_minute: dict[str, int]) -> list[dict[str, str]]:
    """stopline_decision_latency_seconds_bucket series, each bucket growing by its count a minute."""
    return [
        {
            "series": f'stopline_decision_latency_seconds_bucket{{{OPERATOR}, le="{le}"}}',
            "values": f"0+{per_minute.get(le, 0)}x60",
        }
        for le in BUCKETS
    ]


def healthy() -> list[dict[str, str]]:
    """Two operator pods up, one leading, a few scrape errors, fast stops, every stop with its weights."""
    return [
        {"series": f"up{{{OPERATOR}}}", "values": "1x60"},
        {"series": f"up{{{FOLLOWER}}}", "values": "1x60"},
        {"series": f"stopline_leader{{{OPERATOR}}}", "values": "1x60"},
        {"series": f"stopline_leader{{{FOLLOWER}}}", "values": "0x60"},
        {"series": f"stopline_scrape_errors_total{{{OPERATOR}}}", "values": "0+6x60"},  # 0.1 a second
        *histogram({"1": 2, "5": 2, "10": 2, "+Inf": 2}),
    ]


def cases(alerts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One promtool test per alert (it fires, with its labels and annotations, and then stops), plus the
    healthy operator, where none fires."""

    def fired(name: str, **labels: str) -> dict[str, Any]:
        alert = alerts[name]
        every = {**alert["labels"], **labels}
        return {"exp_labels": every, "exp_annotations": expanded(alert["annotations"], every)}

    def at(minutes: int, name: str, *firing: dict[str, Any]) -> dict[str, Any]:
        return {"eval_time": f"{minutes}m", "alertname": name, "exp_alerts": list(firing)}

    lost_more = f'{OPERATOR}, namespace="team-b", reason="NoCheckpoint"'
    return [
        {
            "name": "healthy: no alert",
            "interval": "1m",
            "input_series": healthy(),
            "alert_rule_test": [at(minutes, name) for minutes in (5, 20, 59) for name in alerts],
        },
        {
            "name": "StoplineOperatorDown: every target down, for 5 minutes",
            "interval": "1m",
            "input_series": [
                {"series": f"up{{{OPERATOR}}}", "values": "1x10 0x30"},  # down from minute 11
                {"series": f"up{{{FOLLOWER}}}", "values": "1x5 0x35"},  # down from minute 6
            ],
            "alert_rule_test": [
                at(10, "StoplineOperatorDown"),  # one is still up
                at(14, "StoplineOperatorDown"),  # pending
                at(17, "StoplineOperatorDown", fired("StoplineOperatorDown")),
            ],
        },
        {
            "name": "StoplineOperatorDown: never scraped at all",
            "interval": "1m",
            "input_series": [{"series": 'up{job="something-else"}', "values": "1x30"}],
            "alert_rule_test": [at(6, "StoplineOperatorDown", fired("StoplineOperatorDown"))],
        },
        {
            "name": "StoplineNoLeader: pods up, none leads for 2 minutes, then one does",
            "interval": "1m",
            "input_series": [
                {"series": f"up{{{OPERATOR}}}", "values": "1x40"},
                {"series": f"up{{{FOLLOWER}}}", "values": "1x40"},
                {"series": f"stopline_leader{{{OPERATOR}}}", "values": "1x5 0x35"},  # lost at minute 6
                {"series": f"stopline_leader{{{FOLLOWER}}}", "values": "0x19 1x20"},  # leads from 20
            ],
            "alert_rule_test": [
                at(5, "StoplineNoLeader"),
                at(7, "StoplineNoLeader"),  # pending
                at(9, "StoplineNoLeader", fired("StoplineNoLeader")),
                at(19, "StoplineNoLeader", fired("StoplineNoLeader")),
                at(21, "StoplineNoLeader"),
                at(21, "StoplineOperatorDown"),
            ],
        },
        {
            "name": "StoplineNoLeader: a failover is no alert",
            "interval": "1m",
            "input_series": [
                # the leader's pod deleted at minute 11: its series go stale at once
                {"series": f"up{{{OPERATOR}}}", "values": "1x10 stale"},
                {"series": f"up{{{FOLLOWER}}}", "values": "1x30"},
                {"series": f"stopline_leader{{{OPERATOR}}}", "values": "1x10 stale"},
                {"series": f"stopline_leader{{{FOLLOWER}}}", "values": "0x11 1x20"},  # leads from 12
            ],
            "alert_rule_test": [at(minutes, "StoplineNoLeader") for minutes in (11, 12, 13, 15, 25)],
        },
        {
            "name": "StoplineScrapeErrors: 1 failed read a second for 15 minutes",
            "interval": "1m",
            "input_series": [
                {"series": f"stopline_scrape_errors_total{{{OPERATOR}}}", "values": "0+6x10 60+60x50"},
            ],
            "alert_rule_test": [
                at(10, "StoplineScrapeErrors"),  # 0.1 a second
                at(20, "StoplineScrapeErrors"),  # pending
                at(35, "StoplineScrapeErrors", fired("StoplineScrapeErrors")),
            ],
        },
        {
            "name": "StoplineStopLostWeights: the first such stop of a process, then another, each once",
            "interval": "1m",
            "input_series": [
                # the counter's series appears at its first increment, at 1: minute 10
                {"series": f"stopline_stops_without_weights_total{{{LOST}}}", "values": "_x10 1x25 2x25"},
                # another namespace, counted by another process (after a failover), at minute 40
                {"series": f"stopline_stops_without_weights_total{{{lost_more}}}", "values": "_x40 1x20"},
            ],
            "alert_rule_test": [
                at(9, "StoplineStopLostWeights"),
                at(
                    11,
                    "StoplineStopLostWeights",
                    fired("StoplineStopLostWeights", namespace="team-a", reason="GracePeriodExpired"),
                ),
                at(30, "StoplineStopLostWeights"),  # 20 minutes on: that one stop is old news
                at(
                    42,
                    "StoplineStopLostWeights",
                    fired("StoplineStopLostWeights", namespace="team-a", reason="GracePeriodExpired"),
                    fired("StoplineStopLostWeights", namespace="team-b", reason="NoCheckpoint"),
                ),
                at(59, "StoplineStopLostWeights"),
            ],
        },
        {
            "name": "StoplineDecisionLatencyHigh: every stop takes 5 to 10 s, over the 6 s target",
            "interval": "1m",
            "input_series": histogram({"10": 2, "+Inf": 2}),
            "alert_rule_test": [
                at(10, "StoplineDecisionLatencyHigh"),  # pending
                at(20, "StoplineDecisionLatencyHigh", fired("StoplineDecisionLatencyHigh")),
            ],
        },
        {
            "name": "StoplineDecisionLatencyHigh: no stops at all is no alert",
            "interval": "1m",
            "input_series": histogram({}),
            "alert_rule_test": [at(40, "StoplineDecisionLatencyHigh")],
        },
    ]


def test_promtool_checks_every_alert_of_the_chart_against_series_that_fire_it(tmp_path: Path) -> None:
    rule = render()
    alerts = alerts_of(rule)
    assert set(alerts) == {
        "StoplineOperatorDown",
        "StoplineNoLeader",
        "StoplineScrapeErrors",
        "StoplineStopLostWeights",
        "StoplineDecisionLatencyHigh",
    }
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    tests = cases(alerts)
    fired = {check["alertname"] for case in tests for check in case["alert_rule_test"] if check["exp_alerts"]}
    assert fired == set(alerts), "every alert has a test where it fires"
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    checked = promtool(tmp_path, "check", "rules", "rules.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = promtool(tmp_path, "test", "rules", "tests.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_need_the_operator_scraped() -> None:
    """Without the ServiceMonitor and without a selector of your own, StoplineOperatorDown would fire at
    once and for ever: the chart refuses, saying what to set."""
    result = subprocess.run(
        [str(built_binary("helm")), "template", RELEASE, str(CHART), "--set", "prometheusRule.enabled=true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "set serviceMonitor.enabled=true, or prometheusRule.selector" in result.stderr


def test_the_alerts_follow_the_values(tmp_path: Path) -> None:
    rule = render(
        "--set",
        'prometheusRule.selector=job="ops"\\, cluster="a"',
        "--set",
        "prometheusRule.alertLabels.team=ml",
        "--set",
        "prometheusRule.runbookUrl=https://example.org/troubleshooting",
        "--set-json",  # --set passes 12.5 as a string, which the schema refuses
        "prometheusRule.decisionLatencySeconds=12.5",
        "--set",
        "prometheusRule.severity.critical=page",
    )
    alerts = alerts_of(rule)
    assert 'up{job="ops", cluster="a"}' in alerts["StoplineOperatorDown"]["expr"]
    assert alerts["StoplineDecisionLatencyHigh"]["expr"].rstrip().endswith("> 12.5")
    assert alerts["StoplineOperatorDown"]["labels"] == {"severity": "page", "team": "ml"}
    assert alerts["StoplineNoLeader"]["annotations"]["runbook_url"] == (
        "https://example.org/troubleshooting#stoplinenoleader"
    )
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = promtool(tmp_path, "check", "rules", "rules.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # a paused operator (replicaCount 0) is no outage
    assert {"StoplineOperatorDown", "StoplineNoLeader"}.isdisjoint(
        alerts_of(render("--set", "replicaCount=0"))
    )
