"""The Grafana dashboards' shape: what an import needs, and only variables they define.

Their queries run against real servers: tests/e2e/test_prometheus_cluster.py (Prometheus) and
tests/integration/test_dashboard_graphite.py (carbon).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.unit.files import ROOT

pytestmark = pytest.mark.unit

BOARDS = {
    "amoc-prometheus.json": ("prometheus", "expr"),
    "amoc-graphite.json": ("graphite", "target"),
}
BUILTIN = {"__rate_interval", "__interval", "__range"}  # Grafana's own variables


def board(name: str) -> dict[str, Any]:
    return dict(json.loads((ROOT / "dashboards" / name).read_text()))


def queries(found: dict[str, Any], field: str) -> list[str]:
    """Every query text of a dashboard: panels, annotations, template variables."""
    out = [t[field] for p in found["panels"] for t in p["targets"]]
    for a in found["annotations"]["list"]:
        out.append(a.get("expr") or json.dumps(a["target"]))
    for v in found["templating"]["list"]:
        if v["type"] == "query":
            out.append(v["query"]["query"])
    return out


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_a_dashboard_imports_and_uses_only_its_variables(name: str) -> None:
    kind, field = BOARDS[name]
    found = board(name)
    assert found["uid"] and found["title"].startswith("amoc") and found["schemaVersion"] >= 36
    variables = {v["name"] for v in found["templating"]["list"]}
    (source,) = [v for v in found["templating"]["list"] if v["type"] == "datasource"]
    assert source["name"] == "datasource" and source["query"] == kind
    ids = [p["id"] for p in found["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    for panel in found["panels"]:
        assert panel["datasource"] == {"type": kind, "uid": "${datasource}"}, panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t[field] and t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    assert len(found["annotations"]["list"]) >= 4
    for text in queries(found, field):
        used = set(re.findall(r"\$\{?(\w+)", text)) - BUILTIN
        assert used <= variables, f"{text} uses {used - variables}, not defined"


def test_the_prometheus_dashboard_has_the_panels_the_issue_asks_for() -> None:
    titles = " / ".join(p["title"] for p in board("amoc-prometheus.json")["panels"]).lower()
    for what in ("users", "logins per second", "messages per second", "time to delivery",
                 "by reason", "per node"):  # fmt: skip
        assert what in titles, what
    exprs = queries(board("amoc-prometheus.json"), "expr")
    assert any("histogram_quantile(0.99" in e for e in exprs)
    assert any("amoc_last_event_timestamp_seconds" in e for e in exprs)
