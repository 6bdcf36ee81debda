"""What a capacity run prints and writes besides its JSON: one table per workload (capacity and every load, per
variant), the capacity plan, a markdown copy and the latency-vs-load plot."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.capacity import plan_line
from bench.plots import plot_latency_vs_load
from bench.report import _fmt

# (summary key, header, format)
LOAD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("variant", "Variant", "s"),
    ("load", "Load", "s"),
    ("offered_rate_rps", "Offered req/s", ".3f"),
    ("sent_rate_rps", "Sent req/s", ".3f"),
    ("throughput_img_s", "Answered img/s", ".3f"),
    ("latency_p50_s", "p50 s", ".2f"),
    ("latency_p90_s", "p90 s", ".2f"),
    ("latency_p99_s", "p99 s", ".2f"),
    ("queue_wait_p50_ms", "Queue wait p50 ms", ".0f"),
    ("queue_wait_p99_ms", "p99 ms", ".0f"),
    ("mean_batch_size", "Mean batch", ".2f"),
    ("batch_by_shape", "Mean batch by shape", "s"),
    ("counts", "ok / sent (503, errors)", "s"),
)


def _row(s: dict) -> dict:
    """A summary with the table's derived cells."""
    out = dict(s)
    out["load"] = f"{s['fraction']:g}x" if s["phase"] == "load" else f"capacity ({s['concurrency']} clients)"
    out["counts"] = f"{s['ok']} / {s['sent']} ({s['rejected']}, {s['errors']})"
    if s["phase"] == "capacity":  # clients send on answers, not on a schedule: no offered or sent rate
        out["sent_rate_rps"] = None
    shapes = s.get("by_shape") or {}
    out["batch_by_shape"] = ", ".join(f"{k} {_fmt(v['mean_batch_size'], '.1f')}" for k, v in shapes.items())
    if len(shapes) > 4:  # a preset mix: the markdown has them all, the terminal a count
        out["batch_by_shape_short"] = f"{len(shapes)} shapes"
    return out


def by_workload(run: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in run["rows"]:
        groups.setdefault(r["summary"]["workload"], []).append(_row(r["summary"]))
    return groups


def _plans(run: dict, workload: str) -> list[str]:
    return [f"{p['variant']}: {plan_line(p)}" for p in run.get("plans", []) if p["workload"] == workload]


def print_capacity_summary(run: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, width=220)
    workloads = (run.get("settings") or {}).get("workload_shapes") or {}
    for workload, rows in by_workload(run).items():
        title = f"{run['label']}: {workload} ({workloads.get(workload, '')}) | {run['weights']}"
        table = Table(title=title, title_justify="left")
        for _, header, _ in LOAD_COLUMNS:
            table.add_column(header, justify="left" if header in ("Variant", "Load") else "right")
        for s in rows:
            cells = {**s, "batch_by_shape": s.get("batch_by_shape_short", s["batch_by_shape"])}
            table.add_row(*(_fmt(cells.get(k), f) for k, _, f in LOAD_COLUMNS))
        console.print(table)
        for line in _plans(run, workload):
            console.print(f"plan {line}", soft_wrap=True)
    for skipped in run.get("skipped", []):
        console.print(f"skipped {skipped.get('variant')} / {skipped.get('workload')}: {skipped['reason']}")


def capacity_markdown(run: dict) -> str:
    st = run.get("settings") or {}
    parts = [
        f"# Latency vs offered load and capacity plan: {run['label']}",
        "",
        f"- **Weights**: {run['weights']}",
        "- **Variants** (user_config overlays, applied live): "
        + "; ".join(f"`{k}` = `{v}`" for k, v in (st.get("variants") or {}).items()),
        f"- **Loads**: open loop, seeded Poisson arrivals (seed {st.get('arrival_seed')}), "
        f"{st.get('requests_per_load')} requests at each of {st.get('loads')} x the variant's capacity; capacity: "
        f"closed loop, {st.get('capacity_requests')} requests, 2 x effective max batch clients unless set",
        f"- **Plan**: p99 target {st.get('p99_target_s')} s (answered requests; a load with any 503 or error "
        f"misses), target rate {st.get('target_rate_rps')} req/s",
        "",
    ]
    cols = LOAD_COLUMNS
    for workload, rows in by_workload(run).items():
        parts += [f"## {workload}: {(st.get('workload_shapes') or {}).get(workload, '')}", ""]
        parts.append("| " + " | ".join(h for _, h, _ in cols) + " |")
        parts.append("|" + "---|" * len(cols))
        parts += ["| " + " | ".join(_fmt(s.get(k), f) for k, _, f in cols) + " |" for s in rows]
        parts += ["", *[f"- {line}" for line in _plans(run, workload)], ""]
    return "\n".join(parts)


def write_capacity_report(run: dict, out_dir: Path, stem: str = "capacity") -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{stem}.md"
    md.write_text(capacity_markdown(run))
    return {"markdown": md, "plot_latency_vs_load": plot_latency_vs_load(run, out_dir, stem)}
