"""Tables (markdown in the article's column order, CSV) and a side-by-side serve vs in-process comparison."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from bench.plots import plot_comparison, plot_run
from bench.stats import steady_throughput

logger = logging.getLogger(__name__)

# (summary key, header, format). The first six are the article's columns, in its order.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("batch_size", "Batch size", "d"),
    ("s_per_image", "Time per image (s)", ".3f"),
    ("batch_latency_s", "Total time per batch (s)", ".2f"),
    ("gpu_util_pct", "GPU util, NVML (%)", ".0f"),
    ("peak_vram_nvml_mb", "Peak VRAM, NVML (MB)", ",.0f"),
    ("throughput_img_s", "Throughput (img/s)", ".3f"),
    ("peak_vram_torch_mb", "Peak alloc, torch (MB)", ",.0f"),
    ("steady_throughput_img_s", "Steady img/s (batch to batch)", ".3f"),
    ("sm_activity_pct", "SM activity (%)", ".0f"),
    ("tensor_activity_pct", "Tensor pipes active (%)", ".0f"),
    ("latency_p50_s", "p50 latency (s)", ".2f"),
    ("latency_p90_s", "p90 (s)", ".2f"),
    ("latency_p99_s", "p99 (s)", ".2f"),
    ("power_mean_w", "Mean power (W)", ".0f"),
    ("images_per_kj", "Images per kJ", ".2f"),
    ("dit_tflops", "DiT TFLOP/s", ".3g"),
    ("mfu_pct", "MFU (%)", ".1f"),
    ("mean_batch_size", "Observed mean batch", ".2f"),
    ("counts", "ok / sent (rejected, errors)", "s"),
)

DEFINITIONS = """\
- **Time per image** = measured wall time / images (1 / throughput). **Total time per batch** = mean wall time of one
  pipeline call (serve: `X-Inference-Ms`, per distinct batch; in-process: one `pipe()` call). With the GPU never idle,
  total time per batch / observed batch ≈ time per image - the check the article's own table fails.
- **Steady img/s** = images of every measured batch but the first / time from the first batch's answer to the last
  one's: batches back to back, without the ramp at the row's start (clients start together; the first batch may be
  partial) and the first request's round trip that **Throughput** (first send -> last answer) includes.
- **GPU util, NVML** = share of time *any* kernel ran (what `nvidia-smi` shows); it reads ~100% even for a kernel
  that uses one SM. **SM activity** / **Tensor pipes active** (NVML GPM, Hopper+) show how much of the chip worked.
- **Peak VRAM, NVML** = max device memory in use in the window (all processes, includes the allocator's cache);
  **Peak alloc, torch** = `torch.cuda.max_memory_allocated` during a batch (serve: `X-Peak-Memory-MB`).
- **Latency** (serve) = answer time - scheduled send time, per request; in a closed loop with 2 x batch clients a
  request waits for the batch ahead of it, so p50 ≈ 2 x batch time. In-process: one `pipe()` call.
- **DiT TFLOP/s** = img/s x steps x one DiT forward (analytic; 55.1 TFLOP at 1024²); text encoder and VAE are not
  counted. **MFU** = DiT TFLOP/s / the GPU's bf16 dense peak. **Images per kJ** from the board's energy counter.
"""


def _fmt(value, fmt: str) -> str:
    if value is None or value == "":
        return "n/a"
    if fmt == "s":
        return str(value)
    try:
        return format(value, fmt)
    except (TypeError, ValueError):
        return str(value)


def _counts(s: dict) -> str:
    return f"{s.get('ok', 0)} / {s.get('sent', 0)} ({s.get('rejected', 0)}, {s.get('errors', 0)})"


def summaries(run: dict) -> list[dict]:
    out = []
    for row in run["rows"]:
        s = dict(row["summary"])
        if "steady_throughput_img_s" not in s:  # raw JSON from before the column: derive it from the records
            ok = [r for r in row.get("requests", []) if r.get("phase") == "measure" and r.get("outcome") == "ok"]
            s["steady_throughput_img_s"] = steady_throughput(ok)
        s["counts"] = _counts(s)
        out.append(s)
    return out


def by_size(rows: list[dict]) -> dict[tuple[int, int], list[dict]]:
    groups: dict[tuple[int, int], list[dict]] = {}
    for s in rows:
        groups.setdefault((s["width"], s["height"]), []).append(s)
    return groups


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for s in rows:
        lines.append("| " + " | ".join(_fmt(s.get(k), f) for k, _, f in columns) + " |")
    return "\n".join(lines)


def _header(run: dict) -> list[str]:
    env = run.get("environment") or {}
    gpu = env.get("gpu") or {}
    pk = env.get("packages") or {}
    st = run.get("settings") or {}
    svc = run.get("service") or {}
    gen = (svc.get("generator") or {}) if svc else {}
    lines = [
        f"- **What**: {run['label']}",
        f"- **Weights**: {run['weights']}",
        f"- **GPU**: {gpu.get('name') or 'none (' + str(gpu.get('reason')) + ')'}"
        + (f", driver {gpu['driver']}, {gpu['memory_total_mb'] / 1024:.0f} GiB" if gpu.get("driver") else ""),
        f"- **Software**: torch {pk.get('torch')} (CUDA {env.get('torch_cuda')}), diffusers {pk.get('diffusers')}, "
        f"transformers {pk.get('transformers')}, ray {pk.get('ray')}; python {env.get('python')}; "
        f"commit {env.get('git_commit')}",
        f"- **Settings**: {st.get('steps')} steps, guidance 0.0, prompt mode {st.get('prompt_mode', 'article')} "
        f"({st.get('prompt')!r}, seed {st.get('seed')})",
    ]
    if run["kind"] == "serve_sweep":
        lines.append(
            f"- **Load**: closed loop, {st.get('clients_per_batch')} x batch size clients, {st.get('warmup_batches')} "
            f"warm-up batch(es) (steps={st.get('warmup_steps') or st.get('steps')}, excluded), then "
            f"{st.get('batches')} batches (>= {st.get('min_requests')} requests) per row; endpoint "
            f"{st.get('endpoint')}; device {gen.get('device')}, dtype {gen.get('dtype')}, memory mode "
            f"{(gen.get('batching') or {}).get('memory_mode')}"
        )
    elif run["kind"] == "baseline":
        lines.append(
            f"- **Load**: in-process `pipe(prompt=[p] * bs, ...)`, {st.get('warmup')} warm-up call(s) "
            f"(steps={st.get('warmup_steps') or st.get('steps')}), then {st.get('repeats')} timed calls per row; "
            f"device {st.get('device')}, dtype {st.get('dtype')}"
        )
    elif run["kind"] == "load":
        lines.append(f"- **Load**: {st.get('load')}")
    if st.get("task"):
        lines.append(_task_line(st))
    peak = run.get("gpu_peak_tflops")
    lines.append(f"- **MFU reference**: {f'{peak} TFLOP/s ' if peak else ''}({run.get('gpu_peak_note')})")
    na = (run.get("telemetry") or {}).get("na") or {}
    if na.get("gpu"):
        lines.append(f"- **GPU telemetry n/a**: {na['gpu']}")
    elif na.get("gpm"):
        lines.append(f"- **SM / tensor activity n/a**: {na['gpm']}")
    return lines


def _task_line(st: dict) -> str:
    """Settings of a run that records its task (bench run): what the requests asked for, in the metrics' terms."""
    task = st["task"]
    lora = st.get("lora_text")
    adapters = f"LoRA {lora} (metric tag adapter={st.get('adapter')})" if lora else "no LoRA (adapter=none)"
    if task == "generate":
        return f"- **Task**: generate (endpoint {st.get('endpoint')}); {adapters}"
    inputs = st.get("edit_inputs") or {}
    mask = f", mask: {inputs['mask']}" if inputs.get("mask") else ""
    strength = st.get("strength")
    return (
        f"- **Task**: {task} (POST /v1/images/edits; {inputs.get('images')} input images generated by the service "
        f"first, sent in turn{mask}); strength {'service default' if strength is None else f'{strength:g}'}: "
        f"{st.get('dit_steps')} of {st.get('steps')} steps run the DiT; {adapters}"
    )


def _work(s: dict) -> str:
    """`, inpaint, strength 1 (8 DiT steps), LoRA ink:0.8` for a row's heading; empty for plain generation."""
    parts = []
    if s.get("task", "generate") != "generate":
        parts.append(s["task"])
        if s.get("strength") is not None:
            parts.append(f"strength {s['strength']:g} ({s.get('dit_steps')} DiT steps)")
    if s.get("lora"):
        parts.append(f"LoRA {s['lora']}")
    return "".join(f", {p}" for p in parts)


def run_markdown(run: dict) -> str:
    parts = [f"# Z-Image-Turbo batch-size benchmark: {run['label']}", "", *_header(run), ""]
    for (w, h), rows in by_size(summaries(run)).items():
        parts += [f"## {w}x{h}, {rows[0]['steps']} steps{_work(rows[0])}", "", markdown_table(rows), ""]
    if run.get("skipped"):
        parts += ["Skipped rows:", ""]
        parts += [f"- {s['width']}x{s['height']} bs={s['batch_size']}: {s['reason']}" for s in run["skipped"]]
        parts.append("")
    parts += ["## Columns", "", DEFINITIONS, "Telemetry attribution: " + run["telemetry"]["attribution"], ""]
    return "\n".join(parts)


def write_csv(rows: list[dict], path: Path) -> None:
    keys: list[str] = []
    for s in rows:
        keys += [k for k in s if k not in keys]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def write_run_report(run: dict, out_dir: Path, stem: str | None = None) -> dict[str, Path]:
    """<stem>.md, <stem>.csv and <stem>_*.png in out_dir; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or run["kind"]
    md, csv_path = out_dir / f"{stem}.md", out_dir / f"{stem}.csv"
    md.write_text(run_markdown(run))
    write_csv(summaries(run), csv_path)
    paths = {"markdown": md, "csv": csv_path}
    paths.update(plot_run(run, out_dir, stem))
    return paths


# ---- serve vs in-process ---------------------------------------------------------------------------------------
COMPARE_COLUMNS = (
    ("size", "Size", "s"),
    ("batch_size", "Batch size", "d"),
    ("serve_img_s", "Serve img/s", ".3f"),
    ("baseline_img_s", "In-process img/s", ".3f"),
    ("serve_vs_baseline", "Serve / in-process throughput", ".2f"),
    ("serve_s_per_image", "Serve s/img", ".3f"),
    ("baseline_s_per_image", "In-process s/img", ".3f"),
    ("overhead_pct", "Serving overhead (%)", "+.1f"),
    ("serve_speedup", "Serve speedup vs bs 1", ".2f"),
    ("baseline_speedup", "In-process speedup vs bs 1", ".2f"),
    ("serve_batch_s", "Serve batch time (s)", ".2f"),
    ("baseline_batch_s", "In-process call time (s)", ".2f"),
    ("serve_p50_s", "Serve p50 latency (s)", ".2f"),
    ("serve_vram_torch_mb", "Serve peak alloc (MB)", ",.0f"),
    ("baseline_vram_torch_mb", "In-process peak alloc (MB)", ",.0f"),
)


def _ratio(a, b):
    return a / b if a is not None and b else None


def compare_rows(serve: dict, baseline: dict) -> list[dict]:
    s_rows = {(r["width"], r["height"], r["batch_size"]): r for r in summaries(serve)}
    b_rows = {(r["width"], r["height"], r["batch_size"]): r for r in summaries(baseline)}
    out = []
    for key in sorted(set(s_rows) | set(b_rows), key=lambda k: (-k[0] * k[1], k[2])):
        w, h, bs = key
        s, b = s_rows.get(key, {}), b_rows.get(key, {})
        s1, b1 = s_rows.get((w, h, 1), {}), b_rows.get((w, h, 1), {})
        si, bi = s.get("s_per_image"), b.get("s_per_image")
        out.append(
            {
                "size": f"{w}x{h}",
                "width": w,
                "height": h,
                "batch_size": bs,
                "serve_img_s": s.get("throughput_img_s"),
                "baseline_img_s": b.get("throughput_img_s"),
                "serve_vs_baseline": _ratio(s.get("throughput_img_s"), b.get("throughput_img_s")),
                "serve_s_per_image": si,
                "baseline_s_per_image": bi,
                "overhead_pct": 100 * (si / bi - 1) if si and bi else None,
                "serve_speedup": _ratio(s.get("throughput_img_s"), s1.get("throughput_img_s")),
                "baseline_speedup": _ratio(b.get("throughput_img_s"), b1.get("throughput_img_s")),
                "serve_batch_s": s.get("batch_latency_s"),
                "baseline_batch_s": b.get("batch_latency_s"),
                "serve_p50_s": s.get("latency_p50_s"),
                "serve_vram_torch_mb": s.get("peak_vram_torch_mb"),
                "baseline_vram_torch_mb": b.get("peak_vram_torch_mb"),
            }
        )
    return out


def write_comparison(serve: dict, baseline: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = compare_rows(serve, baseline)
    if serve.get("weights") != baseline.get("weights"):
        logger.warning("comparing different weights: %s vs %s", serve.get("weights"), baseline.get("weights"))
    paths = {}
    paths.update(write_run_report(serve, out_dir, "serve_sweep"))
    paths.update({f"baseline_{k}": v for k, v in write_run_report(baseline, out_dir, "baseline").items()})
    md = out_dir / "report.md"
    md.write_text(
        "\n".join(
            [
                "# Z-Image-Turbo: Ray Serve vs in-process diffusers, same GPU, same settings",
                "",
                f"- **Weights**: serve {serve['weights']}; in-process {baseline['weights']}",
                f"- **GPU**: {((serve.get('environment') or {}).get('gpu') or {}).get('name') or 'none'}",
                "- Serving overhead = serve s/img / in-process s/img - 1 (HTTP, PNG encoding, queueing, Serve "
                "batching; negative: the server's per-prompt encoding and chunked VAE decode beat the plain pipeline).",
                "- Speedup vs bs 1 = throughput at this batch size / throughput at batch size 1, same path.",
                "",
                markdown_table(rows, COMPARE_COLUMNS),
                "",
                "Per-path tables: [serve_sweep.md](serve_sweep.md), [baseline.md](baseline.md).",
                "",
            ]
        )
    )
    csv_path = out_dir / "comparison.csv"
    write_csv(rows, csv_path)
    paths.update({"report": md, "comparison_csv": csv_path})
    paths.update(plot_comparison(serve, baseline, out_dir))
    return paths
