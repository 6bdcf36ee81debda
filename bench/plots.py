"""PNG plots (matplotlib, headless): throughput and utilisation, VRAM, latency CDF; every figure names its weights."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _caption(run: dict) -> str:
    gpu = ((run.get("environment") or {}).get("gpu") or {}).get("name") or "no GPU"
    steps = (run.get("settings") or {}).get("steps")
    return f"{run['label']} | weights: {run['weights']} | {gpu} | {steps} steps"


def _groups(run: dict) -> dict[tuple[int, int], list[dict]]:
    groups: dict[tuple[int, int], list[dict]] = {}
    for row in run["rows"]:
        s = row["summary"]
        groups.setdefault((s["width"], s["height"]), []).append(s)
    return groups


def _xy(rows: list[dict], key: str, scale: float = 1.0):
    pts = [(r["batch_size"], r[key] * scale) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _plot(ax, rows: list[dict], key: str, style: str, scale: float = 1.0, **kw):
    """Plot a series only when it has values (telemetry is n/a on CPU); returns the line or None."""
    xs, ys = _xy(rows, key, scale)
    return ax.plot(xs, ys, style, **kw)[0] if xs else None


def _batch_ticks(ax, run_or_rows) -> None:
    sizes = sorted({r["batch_size"] for r in run_or_rows if r.get("batch_size") is not None})
    if sizes:
        ax.set_xticks(sizes)


def _finish(fig, run_caption: str, path: Path) -> Path:
    fig.text(0.5, 0.005, run_caption, ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_run(run: dict, out_dir: Path, stem: str) -> dict[str, Path]:
    groups = _groups(run)
    caption = _caption(run)
    paths = {}

    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax2 = ax.twinx()
    util_seen = False
    for (w, h), rows in groups.items():
        line = _plot(ax, rows, "throughput_img_s", "o-", label=f"{w}x{h} img/s")
        c = line.get_color() if line else None
        for key, style, name in (("gpu_util_pct", "s--", "NVML util %"), ("sm_activity_pct", "^:", "SM activity %")):
            util_seen |= _plot(ax2, rows, key, style, color=c, alpha=0.6, label=f"{w}x{h} {name}") is not None
    if not util_seen:
        reason = ((run.get("telemetry") or {}).get("na") or {}).get("gpu") or "no samples"
        ax2.text(0.5, 0.5, f"GPU telemetry n/a:\n{reason}", transform=ax.transAxes, ha="center", fontsize=8, alpha=0.6)
    _batch_ticks(ax, [r for rows in groups.values() for r in rows])
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (img/s)")
    ax.set_ylim(bottom=0)
    ax2.set_ylabel("GPU utilisation (%)")
    ax2.set_ylim(0, 105)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    ax.set_title("Throughput and GPU utilisation vs batch size")
    paths["plot_throughput"] = _finish(fig, caption, out_dir / f"{stem}_throughput_util.png")

    fig, ax = plt.subplots(figsize=(8, 4.8))
    vram_seen = False
    for (w, h), rows in groups.items():
        line = _plot(ax, rows, "peak_vram_nvml_mb", "o-", 1 / 1024, label=f"{w}x{h} NVML used")
        kw = {"color": line.get_color()} if line else {}
        torch_line = _plot(ax, rows, "peak_vram_torch_mb", "s--", 1 / 1024, label=f"{w}x{h} torch peak", **kw)
        vram_seen |= line is not None or torch_line is not None
    if not vram_seen:
        ax.text(0.5, 0.5, "no GPU memory readings (CPU run)", transform=ax.transAxes, ha="center", alpha=0.6)
    else:
        ax.legend(fontsize=7)
    _batch_ticks(ax, [r for rows in groups.values() for r in rows])
    ax.set_xlabel("batch size")
    ax.set_ylabel("peak GPU memory (GiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Peak VRAM vs batch size")
    paths["plot_vram"] = _finish(fig, caption, out_dir / f"{stem}_vram.png")

    fig, axes = plt.subplots(1, len(groups) or 1, figsize=(6 * max(len(groups), 1), 4.5), squeeze=False)
    for ax, ((w, h), _) in zip(axes[0], groups.items(), strict=False):
        for row in run["rows"]:
            s = row["summary"]
            if (s["width"], s["height"]) != (w, h):
                continue
            lat = sorted(r["latency_s"] for r in row["requests"] if r["phase"] == "measure" and r["outcome"] == "ok")
            if lat:
                ax.step(lat, [(i + 1) / len(lat) for i in range(len(lat))], where="post", label=f"bs {s['batch_size']}")
        ax.set_xlabel("latency (s)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"Latency CDF, {w}x{h}")
        ax.set_xlim(left=0)
        if ax.get_legend_handles_labels()[0]:  # a row without any answered request draws nothing
            ax.legend(fontsize=7)
    paths["plot_latency_cdf"] = _finish(fig, caption, out_dir / f"{stem}_latency_cdf.png")
    return paths


def plot_comparison(serve: dict, baseline: dict, out_dir: Path) -> dict[str, Path]:
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for run, style in ((serve, "o-"), (baseline, "s--")):
        for (w, h), rows in _groups(run).items():
            _plot(ax, rows, "throughput_img_s", style, label=f"{run['label']} {w}x{h}")
    _batch_ticks(ax, [r["summary"] for run in (serve, baseline) for r in run["rows"]])
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (img/s)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title("Ray Serve vs in-process diffusers")
    caption = f"weights: {serve['weights']} | {_caption(baseline).split(' | ', 2)[2]}"
    return {"plot_compare": _finish(fig, caption, out_dir / "compare_throughput.png")}


def plot_latency_vs_load(run: dict, out_dir: Path, stem: str) -> Path:
    """Latency percentiles vs offered rate, one panel per workload, one colour per variant (p50 dotted, p90 dashed,
    p99 solid); the p99 target as a grey line and each variant's planned rate as a star on it and a vertical line."""
    loads = [r["summary"] for r in run["rows"] if r["summary"]["phase"] == "load"]
    workloads = list(dict.fromkeys(s["workload"] for s in loads)) or ["(no loads)"]
    variants = list(dict.fromkeys(s["variant"] for s in loads))
    colours = {v: f"C{i}" for i, v in enumerate(variants)}
    target = (run.get("settings") or {}).get("p99_target_s")
    fig, axes = plt.subplots(1, len(workloads), figsize=(7 * len(workloads), 4.8), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        for v in variants:
            pts = [s for s in loads if (s["workload"], s["variant"]) == (workload, v)]
            pts.sort(key=lambda s: s["fraction"])
            for q, style in (("p50", ":"), ("p90", "--"), ("p99", "-")):
                xy = [(s["offered_rate_rps"], s[f"latency_{q}_s"]) for s in pts if s[f"latency_{q}_s"] is not None]
                if xy:
                    ax.plot(*zip(*xy, strict=True), style, marker="o", ms=3, color=colours[v], label=f"{v} {q}")
            for s in pts:
                if s["latency_p99_s"] is not None:
                    ax.annotate(f"{s['fraction']:g}x", (s["offered_rate_rps"], s["latency_p99_s"]), fontsize=6)
            for plan in run.get("plans", []):
                if (plan["workload"], plan["variant"]) == (workload, v) and plan["max_rate_rps"] is not None:
                    ax.axvline(plan["max_rate_rps"], color=colours[v], lw=0.8, alpha=0.6, ls="-.")
                    hollow = {"mfc": "none"} if plan["basis"] == "lower bound" else {}  # the real limit is higher
                    ax.plot(plan["max_rate_rps"], plan["p99_target_s"], "*", ms=9, color=colours[v], **hollow)
        top = max((s["latency_p99_s"] or 0 for s in loads if s["workload"] == workload), default=0) * 1.05
        cut = ""
        if target:  # an overloaded p99 would squash the rest: show up to 3x the target
            ax.axhline(target, color="grey", lw=1, label=f"p99 target {target:g} s")
            cut = f", cut at {3 * target:g} s" if top > 3 * target else ""
            top = min(max(top, 1.1 * target), 3 * target)
        # linear axes: the plan interpolates p99 linearly in rate, so its star sits where the drawn p99 line crosses
        ax.set_ylim(0, top or None)
        ax.set_xlim(left=0)
        ax.set_xlabel("offered load (req/s, open loop; labels: fraction of the variant's capacity)")
        ax.set_ylabel(f"latency from scheduled send (s){cut}")
        ax.set_title(f"Latency vs offered load, {workload}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _finish(fig, _caption(run), out_dir / f"{stem}_latency_vs_load.png")
