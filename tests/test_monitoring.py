"""Issue 11: the shipped Prometheus rules pass promtool's checks and unit tests, and the
Grafana dashboard queries only metrics the daemon exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sla_daemon.metrics import Metrics

PACKAGING = Path(__file__).resolve().parents[1] / "packaging"
RULES = PACKAGING / "prometheus" / "sla-daemon.rules.yml"
RULE_TESTS = PACKAGING / "prometheus" / "sla-daemon.rules.test.yml"
DASHBOARD = PACKAGING / "grafana" / "sla-daemon.json"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: .ci/run installs Debian's prometheus")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


@pytest.mark.parametrize(("command", "path"), [("check", RULES), ("test", RULE_TESTS)])
def test_promtool_rules(command: str, path: Path) -> None:
    result = subprocess.run(
        [promtool(), command, "rules", path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def exported_names() -> set[str]:
    """Every series name the daemon's registry exports (counters with _total, ...)."""
    metrics = Metrics()
    for labels, family in ((("x", "y"), metrics.messages), (("x",), metrics.escalations)):
        family.labels(*labels)
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
    return names


def queried_names(expressions: list[str]) -> set[str]:
    return {n for e in expressions for n in re.findall(r"\b(sla_daemon_[a-z_]+)", e)}


def test_the_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = queried_names(exprs)
    assert queried, exprs
    assert queried <= exported_names(), queried - exported_names()


def test_the_alert_rules_query_only_exported_metrics() -> None:
    assert queried_names([RULES.read_text()]) <= exported_names()
