"""Draw the dashboard's main panels with matplotlib from Prometheus range queries (for docs, where no Grafana runs).

The queries are the committed dashboard's own (monitoring/dashboards/*.json), so the picture shows what Grafana
would. Capture from a live Prometheus (raw answers are saved as JSON), or re-plot a saved capture:

    python -m monitoring.render_panels --prometheus http://127.0.0.1:9090 --minutes 5 \
        --snapshot monitoring/snapshots/tiny-cpu.json --png docs/img/dashboard.png --label "tiny random model, CPU"
    python -m monitoring.render_panels --from-snapshot monitoring/snapshots/tiny-cpu.json --png docs/img/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import time
from pathlib import Path

import httpx

from monitoring import dashboard_queries

logger = logging.getLogger(__name__)

MAIN_PANELS = (
    "Images generated / s",
    "HTTP requests / s by status code",
    "Request latency p50 / p90 / p99 (successful generations)",
    "Where the time goes (means)",
    "Queue length",
    "Queue wait",
    "Batch size vs max batch size",
    "Replicas: running vs target",
)
UNITS = {"ms": "ms", "s": "s", "reqps": "req/s", "percentunit": "ratio", "bytes": "bytes", "watt": "W"}


def _units() -> dict[str, str]:
    out = {}
    for path in sorted(dashboard_queries.DASHBOARD_DIR.glob("*.json")):
        for p in json.loads(path.read_text())["panels"]:
            out[p["title"]] = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    return out


def capture(prometheus: str, start: float, end: float, step: float, rate_interval: str, label: str) -> dict:
    """Run each main panel's queries over [start, end]; keep Prometheus' raw `result` next to the query."""
    units = _units()
    panels: dict[str, dict] = {}
    for q in dashboard_queries.load():
        if q.panel not in MAIN_PANELS:
            continue
        promql = q.promql(rate_interval=rate_interval)
        r = httpx.get(
            f"{prometheus}/api/v1/query_range",
            params={"query": promql, "start": start, "end": end, "step": step},
            timeout=60,
        ).json()
        if r.get("status") != "success":
            raise RuntimeError(f"{q.panel}: {r}")
        panel = panels.setdefault(q.panel, {"title": q.panel, "unit": units.get(q.panel, "short"), "queries": []})
        result = r["data"]["result"]
        panel["queries"].append({"ref_id": q.ref_id, "legend": q.legend, "promql": promql, "result": result})
    return {
        "label": label,
        "prometheus": prometheus,
        "start": start,
        "end": end,
        "step": step,
        "rate_interval": rate_interval,
        "captured_at": time.time(),
        "panels": [panels[t] for t in MAIN_PANELS if t in panels],
    }


def _legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() or "value"


def plot(snapshot: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = snapshot["panels"]
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    t0 = snapshot["start"]
    for ax, panel in zip(axes.flat, panels, strict=False):
        for q in panel["queries"]:
            for series in q["result"]:
                xs = [(float(t) - t0) / 60 for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, linewidth=1.4, label=_legend(q["legend"], series["metric"]))
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("minutes", fontsize=8)
        ax.set_ylabel(UNITS.get(panel["unit"], ""), fontsize=8)
        ax.tick_params(labelsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(snapshot["start"]))
    fig.suptitle(
        f"Z-Image on Ray Serve - {snapshot['label']} - Prometheus range queries of the Grafana dashboard "
        f"(rate window {snapshot['rate_interval']}, {when})",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    logger.info("wrote %s", png)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prometheus", help="Prometheus base URL to capture from")
    src.add_argument("--from-snapshot", type=Path, help="re-plot a saved capture")
    parser.add_argument("--minutes", type=float, default=5, help="capture the last N minutes")
    parser.add_argument("--start", type=float, help="capture start (unix time; overrides --minutes)")
    parser.add_argument("--end", type=float, help="capture end (unix time; default now)")
    parser.add_argument("--step", type=float, default=2.0)
    parser.add_argument("--rate-interval", default="30s", help="what $__rate_interval becomes")
    parser.add_argument("--label", default="tiny random model, CPU", help="what ran (shown in the title)")
    parser.add_argument("--snapshot", type=Path, help="where to save the raw capture (JSON)")
    parser.add_argument("--png", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.from_snapshot:
        snapshot = json.loads(args.from_snapshot.read_text())
    else:
        end = args.end or time.time()
        start = args.start or end - args.minutes * 60
        snapshot = capture(args.prometheus, start, end, args.step, args.rate_interval, args.label)
        if args.snapshot:
            args.snapshot.parent.mkdir(parents=True, exist_ok=True)
            args.snapshot.write_text(json.dumps(snapshot, indent=1) + "\n")
            logger.info("wrote %s", args.snapshot)
    plot(snapshot, args.png)


if __name__ == "__main__":
    main()
