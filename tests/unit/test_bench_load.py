"""`bench capacity`'s pure parts: the open-loop schedule at fractions of capacity (the load generator draws the same
arrivals), variants that do not leak into each other, one load's summary from records, the capacity plan's
arithmetic (interpolation, its basis, replicas), the preset mix scaled to a CPU service's limits, and the report files
from a synthetic run."""

from __future__ import annotations

import math

import pytest

from bench.arguments import build_parser
from bench.capacity_plan import capacity_plan, max_rate_within, replicas_needed
from bench.capacity_report import capacity_markdown, print_capacity_summary, write_capacity_report
from bench.load_curve import load_schedule, load_summary, variant_changes
from bench.loadgen import LoadDriver, LoadSpec
from bench.shape_mix import ShapeMix, fits, mix_for, preset_shapes
from bench.workload import Workload
from deployments.config import RequestLimits
from deployments.presets import PRESETS, presets_info


def _info(**limits) -> dict:
    lim = RequestLimits(**limits)
    return {"limits": lim.model_dump(), "presets": presets_info(lim)}


# ---- schedule ----------------------------------------------------------------------------------------------------
def test_schedule_rates_are_fractions_of_capacity_with_one_stretched_arrival_pattern():
    points = load_schedule(2.0, [1.1, 0.25, 0.5], requests=20, seed=7)
    assert [p.fraction for p in points] == [0.25, 0.5, 1.1]
    assert [p.rate_rps for p in points] == pytest.approx([0.5, 1.0, 2.2])
    assert all(len(p.offsets_s) == 20 and list(p.offsets_s) == sorted(p.offsets_s) for p in points)
    # the same seeded gaps, scaled by 1/rate: loads differ in rate only
    assert [t * 0.5 for t in points[0].offsets_s] == pytest.approx([t * 1.0 for t in points[1].offsets_s])
    assert points[0].planned_s == points[0].offsets_s[-1]


def test_schedule_is_what_the_load_generator_sends():
    point = load_schedule(3.0, [0.8], requests=12, seed=3)[0]
    spec = LoadSpec(mode="open", rate=point.rate_rps, requests=12, duration_s=point.planned_s + 1.0, arrival_seed=3)
    assert LoadDriver("http://x", Workload(), spec).arrival_offsets(point.rate_rps, 12) == list(point.offsets_s)


@pytest.mark.parametrize("capacity, fractions, requests", [(0, [0.5], 4), (None, [0.5], 4), (1, [0], 4), (1, [1], 0)])
def test_schedule_refuses_nonsense(capacity, fractions, requests):
    with pytest.raises(ValueError):
        load_schedule(capacity, fractions, requests, 0)


# ---- variants ----------------------------------------------------------------------------------------------------
def test_variants_reset_what_only_another_variant_sets():
    current = {"max_batch_size": 8, "batch_wait_timeout_s": 0.05, "cpu_max_batch_size": 8}
    overlays = {"a": {"max_batch_size": 1}, "b": {"batch_wait_timeout_s": 0.2}}
    changes, original = variant_changes(current, overlays)
    assert changes == {
        "a": {"max_batch_size": 1, "batch_wait_timeout_s": 0.05},
        "b": {"max_batch_size": 8, "batch_wait_timeout_s": 0.2},
    }
    assert original == {"max_batch_size": 8, "batch_wait_timeout_s": 0.05}
    assert variant_changes(current, {"deployed": {}}) == ({"deployed": {}}, {})


def test_a_field_the_generator_lacks_is_refused_before_any_put():
    with pytest.raises(ValueError, match="batch_policy"):
        variant_changes({"max_batch_size": 8}, {"new": {"batch_policy": "latency"}})


def test_variant_argument_syntax():
    args = build_parser().parse_args(
        ["capacity", "--url", "http://h", "--out", "o", "--variant", 'old={"batch_policy": "throughput"}']
        + ["--variant", "mb1={max_batch_size: 1}", "--loads", "0.5", "1.1", "--workload", "single", "presets"]
    )
    assert args.variant == [("old", {"batch_policy": "throughput"}), ("mb1", {"max_batch_size": 1})]
    assert args.loads == [0.5, 1.1] and args.workload == ["single", "presets"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["capacity", "--url", "h", "--out", "o", "--variant", "old=3"])


# ---- one load's summary ------------------------------------------------------------------------------------------
def _rec(i, outcome="ok", w=256, h=256, batch=None, inf=None, wait=None, t=0.0, lat=1.0):
    status = {"ok": 200, "rejected": 503}.get(outcome, 500)
    done = t + lat
    return {
        "index": i,
        "phase": "measure",
        "outcome": outcome,
        "status": status,
        "scheduled_t": t,
        "sent_t": t,
        "done_t": done,
        "latency_s": lat,
        "width": w,
        "height": h,
        "batch_size": batch,
        "inference_ms": inf,
        "queue_wait_ms": wait,
        "replica": "r1",
    }


def test_load_summary_counts_latency_queue_wait_and_batches_per_shape():
    records = [
        _rec(0, batch=2, inf=100.0, wait=10, t=0.0, lat=1.0),
        _rec(1, batch=2, inf=100.0, wait=30, t=0.5, lat=0.6),  # same pipeline call as 0
        _rec(2, batch=1, inf=90.0, wait=20, t=1.0, lat=0.5),
        _rec(3, w=512, h=256, batch=1, inf=150.0, wait=0, t=1.5, lat=2.0),
        _rec(4, outcome="rejected", t=2.0, lat=0.01),
        _rec(5, outcome="error", w=512, h=256, t=3.0, lat=0.01),
    ]
    s = load_summary(records)
    assert (s["sent"], s["ok"], s["rejected"], s["errors"]) == (6, 4, 1, 1)
    assert s["sent"] == s["ok"] + s["rejected"] + s["errors"]
    assert s["sent_rate_rps"] == pytest.approx(5 / 3.0) and "offered_rate_rps" not in s
    assert s["latency_p50_s"] == pytest.approx(0.8)  # answered requests only: 0.5, 0.6, 1.0, 2.0
    assert s["queue_wait_p50_ms"] == pytest.approx(15) and s["queue_wait_p99_ms"] == pytest.approx(29.7)
    assert s["mean_batch_size"] == pytest.approx(4 / 3)  # three distinct pipeline calls: 2, 1, 1
    assert s["by_shape"] == {
        "256x256": {"sent": 4, "ok": 3, "batches": 2, "mean_batch_size": 1.5, "latency_p99_s": pytest.approx(0.992)},
        "512x256": {"sent": 2, "ok": 1, "batches": 1, "mean_batch_size": 1.0, "latency_p99_s": 2.0},
    }


# ---- capacity plan -----------------------------------------------------------------------------------------------
def _load(fraction, p99, capacity=2.0, sent=100, ok=100):
    return {"fraction": fraction, "offered_rate_rps": fraction * capacity, "latency_p99_s": p99, "sent": sent, "ok": ok}


def test_plan_interpolates_p99_between_the_last_load_that_meets_the_target_and_the_first_that_misses():
    loads = [_load(0.25, 2.0), _load(0.5, 3.0), _load(0.8, 6.0), _load(0.95, 14.0), _load(1.1, 60.0, ok=90)]
    plan = capacity_plan(loads, 2.0, target_s=10.0, target_rate_rps=5.0)
    # between 1.6 req/s (p99 6 s) and 1.9 req/s (p99 14 s): 10 s is half way -> 1.75 req/s
    assert plan["basis"] == "interpolated" and plan["max_rate_rps"] == pytest.approx(1.75)
    assert plan["max_fraction_of_capacity"] == pytest.approx(0.875)
    assert plan["replicas_needed"] == math.ceil(5.0 / 1.75) == 3
    assert "0.8x" in plan["how"] and "0.95x" in plan["how"]


def test_plan_per_replica_divides_the_service_rate():
    plan = capacity_plan([_load(0.5, 1.0), _load(1.0, 20.0)], 2.0, 10.0, 3.0, generator_replicas=2)
    # 1.0 + (10 - 1) / 19 * 1.0 req/s for the service, half of it per replica
    assert plan["max_rate_rps"] == pytest.approx(1 + 9 / 19)
    assert plan["per_replica_rate_rps"] == pytest.approx((1 + 9 / 19) / 2)
    assert plan["replicas_needed"] == math.ceil(3.0 / ((1 + 9 / 19) / 2)) == 5


def test_plan_bases_when_there_is_nothing_to_interpolate():
    every = max_rate_within([_load(0.5, 1.0), _load(1.1, 2.0)], 10.0)
    assert every["basis"] == "lower bound" and every["rate_rps"] == pytest.approx(2.2)
    none = max_rate_within([_load(0.25, 11.0), _load(0.5, 12.0)], 10.0)
    assert none["basis"] == "none" and none["rate_rps"] is None and "p99 11.00 s > 10 s" in none["how"]
    rejected = max_rate_within([_load(0.5, 1.0), _load(0.95, 2.0, ok=97), _load(1.1, 30.0)], 10.0)
    assert rejected["basis"] == "measured" and rejected["rate_rps"] == pytest.approx(1.0)
    assert "3 of 100 not answered" in rejected["how"]
    # the first crossing counts: a noisy load that meets the target again above it does not raise the rate
    noisy = max_rate_within([_load(0.5, 1.0), _load(0.8, 11.0), _load(0.95, 9.0)], 10.0)
    assert noisy["basis"] == "interpolated" and noisy["rate_rps"] == pytest.approx(1.0 + 0.9 * 0.6)
    assert max_rate_within([], 10.0)["basis"] == "none"


def test_replicas_needed():
    assert replicas_needed(0.3, 0.1) == 3  # 0.3 / 0.1 = 2.9999999999999996 in floating point
    assert replicas_needed(5.0, 1.25) == 4 and replicas_needed(5.0, 1.3) == 4 and replicas_needed(5.1, 1.25) == 5
    assert replicas_needed(None, 1.0) is None and replicas_needed(5.0, None) is None


# ---- shapes ------------------------------------------------------------------------------------------------------
def test_presets_a_gpu_service_allows_are_sent_as_they_are():
    shapes, note = preset_shapes(_info(max_side=2048, max_pixels=2048 * 2048))
    assert shapes == tuple((p.width, p.height) for p in PRESETS) and note.startswith("33 of 33")
    shapes, note = preset_shapes(_info(max_side=1536, max_pixels=1536 * 1536))
    assert 0 < len(shapes) < 33 and all(max(s) <= 1536 for s in shapes)


def test_presets_scaled_down_to_a_cpu_service():
    info = _info(max_side=512, max_steps=16, max_images_per_request=4)  # bench/configs/cpu_smoke.yaml's limits
    shapes, note = preset_shapes(info)
    assert "scaled down 4x" in note and (512, 288) in shapes and (256, 256) in shapes
    assert all(fits(info["limits"], w, h) for w, h in shapes) and len(set(shapes)) == len(shapes)


def test_shape_mix_sends_every_shape_once_per_round_in_a_seeded_order():
    mix, note = mix_for("presets", Workload(steps=2), _info(max_side=512), seed=1)
    n = len(mix.shapes)
    first, second = [mix.shape(i) for i in range(n)], [mix.shape(i) for i in range(n, 2 * n)]
    assert sorted(first) == sorted(second) == sorted(mix.shapes) and first != second
    assert [mix.shape(i) for i in range(n)] == first  # a function of the index: records know their shape
    body = mix.request(5).body
    assert (body["width"], body["height"]) == mix.shape(5) and body["num_inference_steps"] == 2
    single, note = mix_for("single", Workload(width=1024, height=768), {}, seed=0)
    assert single.shapes == ((1024, 768),) and note == "1024x768"
    with pytest.raises(ValueError):
        ShapeMix(Workload(), ())


# ---- report files ------------------------------------------------------------------------------------------------
def _run() -> dict:
    rows, plans = [], []
    for variant, p99s in (("old", (1.0, 3.0, 20.0)), ("new", (0.5, 1.0, 4.0))):
        cap = {"workload": "single", "variant": variant, "phase": "capacity", "fraction": None, "concurrency": 8}
        rows.append({"summary": {**cap, **load_summary([_rec(0, batch=1, inf=1.0)])}})
        loads = []
        for f, p99 in zip((0.25, 0.8, 1.1), p99s, strict=True):
            s = {"workload": "single", "variant": variant, "phase": "load", "fraction": f, "offered_rate_rps": f * 2}
            s.update(load_summary([_rec(0, batch=1, inf=1.0, lat=p99)]))
            rows.append({"summary": s})
            loads.append(s)
        plans.append({"workload": "single", "variant": variant, **capacity_plan(loads, 2.0, 10.0, 5.0)})
    settings = {"p99_target_s": 10.0, "steps": 8, "variants": {"old": {}, "new": {}}, "workload_shapes": {}}
    return {"label": "latency vs offered load, old vs new", "weights": "random:tiny (...)", "settings": settings,
            "environment": {}, "rows": rows, "plans": plans, "skipped": []}  # fmt: skip


def test_report_files_and_printed_plan(tmp_path, capsys):
    run = _run()
    paths = write_capacity_report(run, tmp_path)
    assert paths["plot_latency_vs_load"].stat().st_size > 0
    md = capacity_markdown(run)
    assert "| old | 0.8x | 1.600 |" in md and "interpolated" in md and "needs 3 replica(s)" in md
    print_capacity_summary(run)
    out = capsys.readouterr().out
    assert "plan new: p99 <= 10 s up to 2.200 req/s per replica" in out and "lower bound" in out


def test_the_mix_workload_sends_the_given_shapes_in_turns():
    base = Workload(width=1024, height=1024)
    mix, note = mix_for("mix", base, {}, 0, ((1024, 1024), (832, 1248), (1024, 1024)))
    assert mix.shapes == ((1024, 1024), (832, 1248)) and note == "2 shapes given"
    assert sorted(mix.shape(i) for i in range(4)) == [(832, 1248), (832, 1248), (1024, 1024), (1024, 1024)]
    with pytest.raises(ValueError, match="--shapes"):
        mix_for("mix", base, {}, 0)
