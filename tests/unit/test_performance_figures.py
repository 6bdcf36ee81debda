"""docs/performance.md's batch-policy table is read from the committed raw results, not typed in: each figure must
equal (to its printed precision) the measured run or the queueing model re-run on it. Changing either alone fails."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.queue_model import BatchTime, percentiles, simulate
from bench.results import read_json
from deployments.options import BatchPolicy

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "bench/results/h200-2026-12-03/latency-1024"


def _rows() -> dict[str, list[str]]:
    text = (REPO / "docs/performance.md").read_text()
    section = text[text.index("## Batch policy under load") :]
    section = section[: section.index("\n## ")] if "\n## " in section else section
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.match(r"\d", cells[1]):
            rows[cells[0]] = cells[1:]
    return rows


def _shown(cells: list[str]) -> list[str]:
    return [re.search(r"\d+\.\d+", c).group() for c in cells]


@pytest.fixture(scope="module")
def model() -> dict:
    (row,) = json.loads((RUN / "model.json").read_text())
    return row


def test_the_measured_row_is_the_raw_run(model):
    data = read_json(RUN / "capacity.json.gz")
    (load,) = [r for r in data["rows"] if r["summary"]["phase"] == "load" and r["summary"]["variant"] == "new"]
    s = load["summary"]
    (key,) = [k for k in _rows() if k.startswith("measured")]
    p90 = percentiles([q["latency_s"] for q in load["requests"] if q["phase"] == "measure"])["p90_s"]
    expected = [s["latency_p50_s"], p90, s["latency_p99_s"], s["mean_batch_size"]]
    assert _shown(_rows()[key]) == [f"{v:.2f}" for v in expected]
    assert s["ok"] == s["sent"] == 300


@pytest.mark.parametrize(
    ("start", "part"), [("queueing model, the run's", "model_trace"), ("queueing model, 200", "model_poisson")]
)
def test_the_model_rows_are_the_committed_model(model, start, part):
    (key,) = [k for k in _rows() if k.startswith(start)]
    m = model[part]
    assert _shown(_rows()[key]) == [f"{m[k]:.2f}" for k in ("p50_s", "p90_s", "p99_s", "mean_batch")]


def test_the_throughput_row_is_the_model_on_the_same_arrivals(model):
    data = read_json(RUN / "capacity.json.gz")
    (load,) = [r for r in data["rows"] if r["summary"]["phase"] == "load"]
    arrivals = sorted(q["due_s"] for q in load["requests"] if q["phase"] == "measure")
    run = simulate(
        arrivals, BatchTime(**model["batch_time"]), BatchPolicy.THROUGHPUT, 12, 0.05, 0.03, model["overhead_s"]
    )
    p = percentiles(run["latency_s"])
    (key,) = [k for k in _rows() if "throughput" in k]
    expected = [
        f"{p['p50_s']:.2f}",
        f"{p['p90_s']:.2f}",
        f"{p['p99_s']:.2f}",
        f"{sum(run['batches']) / len(run['batches']):.2f}",
    ]
    assert _shown(_rows()[key]) == expected
