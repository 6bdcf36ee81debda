"""Every PromQL query of the committed dashboards, with Grafana's variables replaced, to run against Prometheus.

"All" of a multi-value variable is its allValue `.*` (which also matches an absent label: `ray_io_cluster` on a
plain Ray cluster); `$__rate_interval` becomes a fixed window suited to the scrape interval.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from monitoring.dashboard import DASHBOARD_DIR
from monitoring.panels import DCGM_POD_ALL


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str  # as committed (with $variables)
    legend: str

    def promql(self, rate_interval: str = "1m", **values: str) -> str:
        """`values` overrides a variable, e.g. Application="zimage"; the others are "All"."""
        expr = self.expr.replace("$__rate_interval", rate_interval)
        for name in ("Cluster", "Application", "Replica", "Namespace"):
            expr = expr.replace(f"${name}", values.get(name, ".*"))
        expr = expr.replace("$Pod", values.get("Pod", DCGM_POD_ALL))  # the DCGM dashboard's "All"
        if re.search(r"\$[A-Za-z_]", expr):  # label_replace's "$1" is PromQL, not a variable
            raise ValueError(f"{self.panel}/{self.ref_id}: unsubstituted variable in {expr}")
        return expr


def load(directory: Path = DASHBOARD_DIR, uid: str | None = None) -> list[PanelQuery]:
    """Every target of every committed dashboard, or of the one with this `uid`."""
    out = []
    for path in sorted(directory.glob("*.json")):
        d = json.loads(path.read_text())
        if uid is not None and d["uid"] != uid:
            continue
        for panel in d["panels"]:
            for t in panel.get("targets", []):
                out.append(PanelQuery(d["uid"], panel["title"], t["refId"], t["expr"], t.get("legendFormat", "")))
    return out


def variable_queries(directory: Path = DASHBOARD_DIR, uid: str | None = None) -> dict[str, str]:
    """Variable name -> its label_values(...) query (of every dashboard, or of the one with this `uid`)."""
    out = {}
    for path in sorted(directory.glob("*.json")):
        d = json.loads(path.read_text())
        if uid is not None and d["uid"] != uid:
            continue
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                out[v["name"]] = v["query"]
    return out
