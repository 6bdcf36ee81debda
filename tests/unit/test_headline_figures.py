"""docs/performance.md's headline table (served H200, bf16 and FP8, plain diffusers) is read from committed raw
results, not typed in: every figure checked here must equal (to its printed precision) the number in
`bench/results/h200-2026-12-02/`. Changing either one alone fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.results import read_json

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "bench/results/h200-2026-12-02"
DOC = REPO / "docs/performance.md"


def _summary(path: str) -> dict:
    return read_json(RUN / path)["rows"][0]["summary"]


def _table() -> dict[str, list[str]]:
    text = DOC.read_text()
    section = text[text.index("## Served, H200: the headline") :]
    section = section[: section.index("\n## ")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and not set(cells[1]) <= set("-"):
            rows[cells[0]] = cells[1:3]
    return rows


def _numbers(cell: str) -> list[str]:
    return re.findall(r"\d+\.\d+", cell)


def _row(start: str) -> list[str]:
    rows = _table()
    (key,) = [k for k in rows if k.startswith(start)]
    return rows[key]


@pytest.mark.parametrize("column, mode", [(0, "bf16"), (1, "fp8")])
def test_throughput_row_matches_raw(column, mode):
    s = _summary(f"served-{mode}/throughput/serve_sweep.json.gz")
    assert s["ok"] == s["sent"] and s["mean_batch_size"] == 12
    whole, steady = _numbers(_row("Throughput, 24 clients")[column])[:2]
    assert whole == f"{s['throughput_img_s']:.3f}" and steady == f"{s['steady_throughput_img_s']:.3f}"


@pytest.mark.parametrize("column, mode", [(0, "bf16"), (1, "fp8")])
def test_one_client_latency_row_matches_raw(column, mode):
    for fmt in ("jpeg", "png"):
        p50, p99 = _numbers(_row(f"Latency, one client, `max_batch_size` 1, {fmt.upper()}")[column])
        s = _summary(f"served-{mode}/c1-{fmt}/serve_sweep.json.gz")
        assert [p50, p99] == [f"{s['latency_p50_s']:.2f}", f"{s['latency_p99_s']:.2f}"]


def test_plain_diffusers_row_matches_raw():
    rows = {r["batch"]: r["img_per_s"] for r in read_json(RUN / "pipe/pipe.json.gz")["rows"]}
    assert _numbers(_row("Plain diffusers")[0]) == [f"{rows[1]:.3f}", f"{rows[4]:.3f}"]


def test_environment_line_matches_the_run():
    env = (RUN / "served-bf16/environment.txt").read_text()
    text = DOC.read_text()
    for version in re.findall(r"(?:torch|diffusers|transformers|ray) (\S+)", env):
        assert version.split("+")[0] in text
    assert "NVIDIA H200" in env and "143771 MiB" in env and "143,771 MiB" in text
