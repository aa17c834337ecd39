"""The Grafana dashboard config/grafana/heimdall.json as the tests read it: its panels, queries and template
variables, and the values a Prometheus-backed test substitutes for those variables."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config" / "grafana" / "heimdall.json"


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel that is not a row (rows may nest collapsed panels)."""
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def targets(dashboard: dict) -> list[tuple[str, dict]]:
    """(panel title, target) for every query."""
    return [(p["title"], t) for p in panels(dashboard) for t in p.get("targets", [])]


def template_variables(dashboard: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana ``$name`` / ``${name}`` variables (longest names first, so ``$__rate_interval`` wins)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    return expr


def variable_values(rate_interval: str = "30s") -> dict[str, str]:
    """What a Prometheus-backed test puts in place of the dashboard's variables ("All" for the query variables)."""
    return {"instance": ".+", "receiver": ".+", "channel": ".+", "__rate_interval": rate_interval}
