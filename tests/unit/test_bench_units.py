"""Bench arithmetic without a server: percentiles, reconciled counts, the DiT FLOP formula, reports from a recording.

The FLOP formula is checked against torch's FlopCounter on the real diffusers transformer class (tiny sizes, CPU:
the counter does not see CPU attention, so the Linear part is compared exactly) and against 55.1 TFLOP at 1024².
The report test feeds a recorded run (requests + GPU samples written as the bench writes them) to the report code.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
from diffusers import ZImageTransformer2DModel
from torch.utils.flop_counter import FlopCounterMode

from bench.flops import FULL_ARCH, DitArch, arch_for_source, gpu_peak_tflops
from bench.report import COLUMNS, compare_rows, write_comparison, write_run_report
from bench.results import RunFile, load_run
from bench.stats import count_outcomes, percentile, request_stats
from bench.telemetry import summarize_window
from deployments.config import RandomArch
from deployments.observability.gpu_sampler import GpuSample
from deployments.pipeline.random_model import transformer_config

# Latencies (s) recorded from a CPU sweep row, unsorted as they arrived.
RECORDED = [0.412, 0.398, 1.107, 0.405, 0.731, 0.389, 2.954, 0.402, 0.420, 0.395, 0.818, 0.401]


def test_percentiles_match_hand_computed_and_numpy():
    xs = sorted(RECORDED)  # 0.389 .395 .398 .401 .402 .405 .412 .420 .731 .818 1.107 2.954
    assert percentile(RECORDED, 50) == pytest.approx((0.405 + 0.412) / 2)  # rank 5.5
    assert percentile(RECORDED, 90) == pytest.approx(xs[9] + 0.9 * (xs[10] - xs[9]))  # rank 9.9
    assert percentile(RECORDED, 99) == pytest.approx(xs[10] + 0.89 * (xs[11] - xs[10]))  # rank 10.89
    assert percentile(RECORDED, 0) == min(RECORDED) and percentile(RECORDED, 100) == max(RECORDED)
    for q in (1, 25, 50, 75, 90, 99, 99.9):
        assert percentile(RECORDED, q) == pytest.approx(float(np.percentile(RECORDED, q)))
    assert percentile([], 50) is None


def _record(i, outcome="ok", lat=1.0, bs=2, inf_ms=900.0, t0=1000.0, phase="measure", status=200):
    return {
        "index": i,
        "phase": phase,
        "scheduled_t": t0 + i * 0.5,
        "sent_t": t0 + i * 0.5 + 0.001,
        "done_t": t0 + i * 0.5 + lat,
        "latency_s": lat,
        "status": status,
        "outcome": outcome,
        "batch_size": bs if outcome == "ok" else None,
        "inference_ms": inf_ms + (i // bs) if outcome == "ok" else None,  # one value per batch of bs requests
        "queue_wait_ms": 5.0,
        "peak_memory_mb": 20000.0 + i,
        "replica": "r1",
    }


def test_request_stats_counts_reconcile_and_batches_are_deduplicated():
    recs = [_record(i, lat=RECORDED[i]) for i in range(8)]
    recs += [_record(8, "rejected", status=503), _record(9, "error", status=500), _record(10, "timeout", status=None)]
    recs.append(_record(11, "cancelled", status=None))
    s = request_stats(recs)
    assert (s["sent"], s["ok"], s["rejected"], s["errors"]) == (12, 8, 1, 3)
    assert s["sent"] == s["ok"] + s["rejected"] + s["errors"] == len(recs)
    assert count_outcomes(recs)["errors"] == 3
    assert s["batches"] == 4 and s["mean_batch_size"] == 2.0  # 8 ok requests in batches of 2
    assert s["batch_latency_s"] == pytest.approx((900 + 901 + 902 + 903) / 4 / 1e3)
    assert s["latency_p50_s"] == pytest.approx(percentile(RECORDED[:8], 50))
    assert s["wall_s"] == pytest.approx(recs[-1]["done_t"] - recs[0]["scheduled_t"])
    assert s["throughput_img_s"] == pytest.approx(8 / s["wall_s"])
    assert s["peak_vram_torch_mb"] == 20007.0


def test_steady_throughput_leaves_out_the_ramp_and_the_first_batch():
    """A row as the H100 showed it: clients start together, the first batch is partial (4 of 8), then full batches
    every 5 s; each batch's answers reach the client over 0.3 s."""
    recs, t = [], 1000.0
    for b, size in enumerate((4, 8, 8, 8)):
        done = t + 0.5 + 5.0 * (b + 1)
        for k in range(size):
            rec = _record(len(recs), bs=size)
            rec.update(scheduled_t=t, done_t=done - 0.3 + 0.3 * k / (size - 1), inference_ms=5000.0 + b)
            recs.append(rec)
    s = request_stats(recs)
    assert s["steady_throughput_img_s"] == pytest.approx(24 / 15.0)  # batches 2-4 in 15 s: 1.6 img/s
    assert s["throughput_img_s"] == pytest.approx(28 / 20.5)  # first send -> last answer: 1.37 img/s
    assert request_stats(recs[:4])["steady_throughput_img_s"] is None  # one batch: no batch-to-batch time


def test_dit_flops_match_the_reference_and_torch_flop_counter():
    assert FULL_ARCH.forward_flops(1024, 1024) / 1e12 == pytest.approx(55.1, abs=0.05)
    assert DitArch.from_config(transformer_config(RandomArch.FULL)) == FULL_ARCH
    defaults = {k: v.default for k, v in inspect.signature(ZImageTransformer2DModel.__init__).parameters.items()}
    assert DitArch.from_config(defaults) == FULL_ARCH  # diffusers' defaults are the released model's
    # 512² has a quarter of the image tokens; attention shrinks faster than linearly.
    assert 0.2 < FULL_ARCH.forward_flops(512, 512) / FULL_ARCH.forward_flops(1024, 1024) < 0.25
    model = ZImageTransformer2DModel(**transformer_config(RandomArch.TINY)).eval()
    arch = DitArch.from_config(model.config)
    assert arch == arch_for_source("random:tiny")
    for h, w, cap in ((256, 256, 25), (128, 384, 40)):
        x = [torch.randn(16, 1, h // 8, w // 8)]
        feats = [torch.randn(cap, arch.cap_feat_dim)]
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, torch.tensor([0.5]), feats, return_dict=False)
        assert counter.get_total_flops() == arch.linear_flops(w, h, cap)


def test_gpu_peaks_by_nvml_name():
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_peak_tflops("NVIDIA A100-SXM4-40GB") == 312.0
    assert gpu_peak_tflops("Some Future GPU") is None and gpu_peak_tflops(None) is None


def _samples(t0: float, t1: float, hz: float = 10.0) -> list[GpuSample]:
    n = int((t1 - t0) * hz) + 1
    return [
        GpuSample(
            t=t0 + i / hz,
            util_pct=98.0,
            mem_used_bytes=(30 + i % 3) * 2**30,
            mem_total_bytes=80 * 2**30,
            power_w=600.0,
            energy_mj=1_000_000 + int(i / hz * 600_000),  # 600 W
            sm_activity_pct=60.0,
            sm_occupancy_pct=30.0,
            tensor_activity_pct=40.0,
            dram_bw_pct=20.0,
        )
        for i in range(n)
    ]


def test_telemetry_window_summary():
    s = summarize_window(_samples(0.0, 10.0), 0.0, 10.0)
    assert s["telemetry_samples"] == 101 and s["telemetry_hz"] == pytest.approx(10.0)
    assert s["gpu_util_pct"] == 98.0 and s["sm_activity_pct"] == 60.0 and s["tensor_activity_pct"] == 40.0
    assert s["peak_vram_nvml_mb"] == 32 * 1024
    assert s["energy_j"] == pytest.approx(6000.0, rel=0.01) and s["energy_from"] == "energy counter"
    assert summarize_window([], 0, 1) == {"telemetry_samples": 0}


def _recorded_run(tmp_path, kind: str, label: str, throughput_scale: float = 1.0) -> dict:
    env = {"gpu": {"name": "NVIDIA H100 80GB HBM3", "driver": "570.1", "memory_total_mb": 81559}, "packages": {}}
    run = RunFile(tmp_path / f"{kind}.json", kind, label, "random:full", env, {"steps": 8, "prompt": "p", "seed": 42})
    for bs in (1, 2, 4):
        recs = [_record(i, bs=bs, lat=2.6 * bs / throughput_scale, t0=1000.0 * bs) for i in range(3 * bs)]
        stats = request_stats(recs)
        samples = _samples(stats["window_start"], stats["window_end"])
        run.add_row({"width": 1024, "height": 1024, "steps": 8, "batch_size": bs}, stats, samples, {}, recs)
    run.data["telemetry"]["na"] = {"gpu": None, "gpm": None}
    run.save()
    return load_run(run.path)


def test_report_from_recorded_json_writes_table_csv_and_plots(tmp_path):
    run = _recorded_run(tmp_path, "serve_sweep", "served (Ray Serve, HTTP)")
    assert json.loads((tmp_path / "serve_sweep.json").read_text())["rows"][0]["telemetry_samples"]
    row = run["rows"][2]["summary"]
    assert row["dit_tflops"] == pytest.approx(row["throughput_img_s"] * 8 * FULL_ARCH.forward_flops(1024, 1024) / 1e12)
    assert row["mfu_pct"] == pytest.approx(100 * row["dit_tflops"] / 989.4)
    assert row["images_per_kj"] == pytest.approx(row["images"] / (row["energy_j"] / 1000))
    paths = write_run_report(run, tmp_path / "out")
    md = paths["markdown"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Batch size"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[:6] == [
        "Batch size",
        "Time per image (s)",
        "Total time per batch (s)",
        "GPU util, NVML (%)",
        "Peak VRAM, NVML (MB)",
        "Throughput (img/s)",
    ]  # the article's column order
    assert len(cells) == len(COLUMNS)
    assert f"| 4 | {row['s_per_image']:.3f} |" in md and "random:full (random weights, real architecture" in md
    assert "| 98 | 32,768 |" in md  # NVML util and NVML peak from the samples in the window
    assert paths["csv"].read_text().count("\n") == 4  # header + 3 rows
    for key in ("plot_throughput", "plot_vram", "plot_latency_cdf"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[key].stat().st_size > 10_000


def test_comparison_report_shows_ratios(tmp_path):
    serve = _recorded_run(tmp_path / "s", "serve_sweep", "served")
    base = _recorded_run(tmp_path / "b", "baseline", "in-process", throughput_scale=1.25)
    rows = {r["batch_size"]: r for r in compare_rows(serve, base)}
    assert (
        rows[2]["serve_vs_baseline"] == pytest.approx(rows[2]["serve_img_s"] / rows[2]["baseline_img_s"])
        and rows[2]["serve_vs_baseline"] < 1
    )
    assert rows[1]["serve_speedup"] == 1.0
    assert rows[4]["overhead_pct"] == pytest.approx(
        100 * (rows[4]["serve_s_per_image"] / rows[4]["baseline_s_per_image"] - 1)
    )
    paths = write_comparison(serve, base, tmp_path / "report")
    assert "Serve / in-process throughput" in paths["report"].read_text()
    assert paths["plot_compare"].stat().st_size > 10_000


def test_workload_sends_the_output_format_only_when_asked():
    from bench.workload import Workload

    assert "output_format" not in Workload().request(0).body
    path, body, files = Workload(output_format="jpeg").request(0)
    assert path == "/generate" and body["output_format"] == "jpeg" and files is None
    path, body, _ = Workload(endpoint="openai", output_format="webp").request(0)
    assert path == "/v1/images/generations" and body["output_format"] == "webp"
    with pytest.raises(ValueError, match="output format"):
        Workload(output_format="gif")


def test_run_parses_task_lora_and_strength(capsys):
    from bench.cli import build_parser
    from bench.workload import Lora, Workload

    def parse(*items):
        return build_parser().parse_args(["run", "--url", "http://x", "--out", "o", *items])

    args = parse("--task", "inpaint", "--lora", "ink:0.8", "--lora", "film", "--strength", "0.7")
    assert (args.task, args.lora, args.strength) == ("inpaint", [Lora("ink", 0.8), Lora("film")], 0.7)
    assert parse().task == "generate" and parse().lora == []
    for bad in (["--lora", ":1"], ["--lora", "ink:"], ["--strength", "0"], ["--strength", "1.5"], ["--task", "x"]):
        with pytest.raises(SystemExit):
            parse(*bad)
        assert bad[0] in capsys.readouterr().err
    body = Workload(loras=(Lora("ink", 0.8),)).request(0).body  # JSON routes: a list of objects
    assert body["lora"] == [{"name": "ink", "scale": 0.8}]


def test_sweep_user_config_parses_yaml_scalars_and_refuses_the_per_row_key(capsys):
    from bench.cli import build_parser

    def parse(*items):
        return build_parser().parse_args(["sweep", "--url", "http://x", "--grid", "256=1", "--out", "o", *items])

    items = ("batch_wait_timeout_s=0", "memory_mode=gpu", "x=null")
    args = parse(*(arg for item in items for arg in ("--user-config", item)))
    assert dict(args.user_config) == {"batch_wait_timeout_s": 0, "memory_mode": "gpu", "x": None}
    for bad in ("batch_wait_timeout_s", "=1", "max_batch_size=4"):
        with pytest.raises(SystemExit):  # argparse: usage error naming the option, not a traceback
            parse("--user-config", bad)
        assert "--user-config" in capsys.readouterr().err


def test_committed_results_are_read_compressed_or_not(tmp_path):
    """bench/results/ stores raw JSON gzip-compressed; the readers take .json and .json.gz alike."""
    import gzip
    import json

    from bench.results import SCHEMA, load_run, read_json, run_name

    data = {"schema": SCHEMA, "kind": "serve_sweep", "rows": []}
    plain, packed = tmp_path / "serve_sweep.json", tmp_path / "serve_sweep.json.gz"
    plain.write_text(json.dumps(data))
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert load_run(plain) == load_run(packed) == read_json(packed) == data
    assert run_name(plain) == run_name(packed) == "serve_sweep"
