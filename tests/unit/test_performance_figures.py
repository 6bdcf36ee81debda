"""docs/performance.md's batch-policy tables are read from the committed raw results, not typed in: each figure must
equal (to its printed precision) the measured run, or the queueing model, which is itself re-run on the run here.
Changing a figure, the raw file or the model alone fails."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.queue_model import model_run, percentiles
from bench.results import read_json

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "bench/results/h200-2026-12-03/latency-study"
POLICY = {"throughput": "old", "latency": "new"}  # the run's variant names
WORKLOAD = {"1024²": "single_1024", "512²": "single_512", "mix of 5 shapes": "mix"}


def _section() -> str:
    text = (REPO / "docs/performance.md").read_text()
    section = text[text.index("## Batch policy under load") :]
    return section[: section.index("\n## ")] if "\n## " in section else section


def _table(columns: int) -> list[list[str]]:
    rows = []
    for line in _section().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == columns and not set(cells[0]) <= {"-"} and cells[0] != "Row":
            rows.append(cells)
    return rows


def _numbers(cells: list[str]) -> list[str]:
    return [re.search(r"\d+\.\d+", c).group() for c in cells]


def _policy(label: str) -> str:
    (name,) = [p for p in POLICY if f"`{p}`" in label]
    return POLICY[name]


def _rows(workload: str, phase: str) -> dict[str, dict]:
    data = read_json(RUN / workload / "capacity.json.gz")
    return {r["summary"]["variant"]: r for r in data["rows"] if r["summary"]["phase"] == phase}


@pytest.fixture(scope="module")
def model() -> dict[str, dict]:
    return {row["variant"]: row for row in json.loads((RUN / "single_1024/model.json").read_text())}


def test_the_latency_table_has_every_row():
    labels = [cells[0] for cells in _table(5) if cells[0] not in (*WORKLOAD, "Workload")]
    assert len(labels) == 6 and sum("measured" in x for x in labels) == 2 and sum("model" in x for x in labels) == 4


def test_the_measured_rows_are_the_raw_run():
    loads = _rows("single_1024", "load")
    assert loads["old"]["summary"]["offered_rate_rps"] == loads["new"]["summary"]["offered_rate_rps"]
    for cells in (c for c in _table(5) if "measured" in c[0]):
        row = loads[_policy(cells[0])]
        s = row["summary"]
        p90 = percentiles([q["latency_s"] for q in row["requests"] if q["phase"] == "measure"])["p90_s"]
        expected = [s["latency_p50_s"], p90, s["latency_p99_s"], s["mean_batch_size"]]
        assert _numbers(cells[1:]) == [f"{v:.2f}" for v in expected], cells
        assert s["ok"] == s["sent"] == 300


def test_the_model_rows_are_the_committed_model(model):
    for cells in (c for c in _table(5) if "model" in c[0]):
        m = model[_policy(cells[0])]["model_trace" if "the run's arrivals" in cells[0] else "model_poisson"]
        assert _numbers(cells[1:]) == [f"{m[k]:.2f}" for k in ("p50_s", "p90_s", "p99_s", "mean_batch")], cells


def test_the_committed_model_is_the_model_rerun_on_the_raw_run(model):
    for row in model_run(read_json(RUN / "single_1024/capacity.json.gz")):
        committed = model[row["variant"]]
        for part in ("model_trace", "model_poisson"):
            assert row[part] == pytest.approx(committed[part], rel=1e-9), (row["variant"], part)


def test_the_ratios_in_the_text_are_the_measured_ones():
    loads = {v: r["summary"] for v, r in _rows("single_1024", "load").items()}
    p90 = {
        v: percentiles([q["latency_s"] for q in r["requests"] if q["phase"] == "measure"])["p90_s"]
        for v, r in _rows("single_1024", "load").items()
    }
    expected = (
        f"p50 {loads['new']['latency_p50_s'] / loads['old']['latency_p50_s']:.2f}×, "
        f"p90 {p90['new'] / p90['old']:.2f}×, p99 {loads['new']['latency_p99_s'] / loads['old']['latency_p99_s']:.2f}×"
    )
    assert expected in _section()


def test_the_saturation_table_is_the_raw_capacity_runs():
    table = [c for c in _table(5) if c[0] in WORKLOAD]
    assert len(table) == 6
    for workload, policy, img_s, gpu, batch in table:
        s = _rows(WORKLOAD[workload], "capacity")[_policy(policy)]["summary"]
        assert [img_s, gpu, batch] == [
            f"{s['throughput_img_s']:.3f}",
            f"{s['gpu_s_per_image']:.3f}",
            f"{s['mean_batch_size']:.2f}",
        ], (workload, policy)
        assert s["ok"] == s["sent"]


def _variant(workload: str, name: str) -> dict:
    return read_json(RUN / workload / "capacity.json.gz")["variants"][name]


def test_the_figures_in_the_bullets_are_the_raw_run(model):
    """The prose's figures, each from the raw files: percentages, the 512² curve, the 0.8x load at 512², the mix's
    batch-to-batch rates, the model's fit and overheads, the GPU idle gaps."""
    text = _section()
    cap = {w: {v: r["summary"] for v, r in _rows(w, "capacity").items()} for w in ("single_1024", "single_512", "mix")}
    ratio = {w: 100 * c["new"]["throughput_img_s"] / c["old"]["throughput_img_s"] for w, c in cap.items()}
    assert f"keeps {ratio['single_1024']:.1f}% of" in text and f"reached {ratio['single_512']:.1f}% of" in text
    learnt = {
        v: _variant("single_512", v)["batching_after"]["efficiency"]["generate 512x512 8 steps"]
        for v in POLICY.values()
    }
    curve = learnt["new"]["s_per_image"]
    assert f"learnt {curve['4']:.3f} s/img at batch 4 and\n  {curve['8']:.3f} at batch 8" in text
    assert learnt["new"]["batches"]["8"] == 1  # "from a single batch of 8"
    assert f"batch 12 ({learnt['old']['s_per_image']['12']:.3f} s/img" in text
    loads = {v: r["summary"] for v, r in _rows("single_512", "load").items()}
    new, old = loads["new"], loads["old"]
    assert (
        f"`latency` answered p50 {new['latency_p50_s']:.2f} s / p99 {new['latency_p99_s']:.2f} s against "
        f"{old['latency_p50_s']:.2f} s / {old['latency_p99_s']:.2f} s" in text
    )
    mix = cap["mix"]
    assert (
        f"`throughput` ran {mix['old']['steady_throughput_img_s']:.3f} img/s and `latency`\n  "
        f"{mix['new']['steady_throughput_img_s']:.3f}" in text
    )
    assert f"({mix['old']['gpu_s_per_image']:.3f} against {mix['new']['gpu_s_per_image']:.3f} GPU s/img)" in text
    fit = model["new"]["batch_time"]
    assert f"T(b) = −{-fit['fixed_s']:.4f} + {fit['per_image_s']:.4f} × b" in text
    assert f"JPEG: {model['old']['overhead_s']:.3f} s and {model['new']['overhead_s']:.3f} s" in text
    poisson = {v: model[v]["model_poisson"] for v in ("old", "new")}
    assert f"about the same ({poisson['new']['p99_s'] / poisson['old']['p99_s']:.2f}×)" in text
    gaps = {v: _variant("single_1024", v)["batching_after"]["gpu_idle_gaps_while_waiting"] for v in ("old", "new")}
    own = gaps["new"]["count"] - gaps["old"]["count"]
    own_mean = (gaps["new"]["count"] * gaps["new"]["mean_ms"] - gaps["old"]["count"] * gaps["old"]["mean_ms"]) / own
    assert f"{gaps['old']['count']} under `throughput`, mean {gaps['old']['mean_ms']:.1f} ms" in text
    assert f"{gaps['new']['count']} in all after `latency`, mean {gaps['new']['mean_ms']:.2f} ms" in text
    assert f"its own {own} gaps\n  average {own_mean:.1f} ms" in text
