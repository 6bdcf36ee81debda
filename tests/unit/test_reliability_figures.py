"""docs/reliability.md's figures are read against the raw files in tests/results/reliability/, not trusted as typed:
every summary row's counts (sent, OK, rejected, errors), the burst's latencies, and the soak section. Changing a
figure or a file alone fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.results import read_json

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs/reliability.md").read_text()
RESULTS = REPO / "tests/results/reliability"
STATUS_5XX = re.compile(r"5\d\d")


def _summary_rows() -> dict[str, list[str]]:
    """File name -> the row's cells, for every summary-table row that names its raw file."""
    table = DOC[DOC.index("## Summary") :].split("\n## ")[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        named = re.search(r"`([\w.]+\.json(?:\.gz)?)`", cells[0])
        if named:
            rows[named.group(1)] = cells
    return rows


def _counts(data: dict) -> dict[str, int]:
    """sent / ok / rejected (503) / error (other 5xx) of a result file, whichever way it recorded them."""
    if "statuses" in data:
        statuses = {int(k): v for k, v in data["statuses"].items()}
        return {
            "sent": sum(statuses.values()),
            "ok": statuses.get(200, 0),
            "rejected": statuses.get(503, 0),
            "error": sum(v for k, v in statuses.items() if STATUS_5XX.fullmatch(str(k)) and k != 503),
        }
    # One `summary`, or the phases an OOM or a code redeploy records apart.
    keys = (
        ["summary"]
        if isinstance(data.get("summary"), dict)
        else ["burst", "steady", "in_flight_at_update", "load_across_update"]
    )
    parts = [data[k] for k in keys if isinstance(data.get(k), dict)]
    return {key: sum(p[key] for p in parts) for key in ("sent", "ok", "rejected", "error")}


def _cell_total(cell: str) -> int | None:
    """`5 696` -> 5696; `8 (+17 after)` and `8 + 36` -> the sum; `—` -> None (not applicable)."""
    numbers = re.findall(r"\d+", re.sub(r"(?<=\d)[ \u202f\u00a0](?=\d{3}\b)", "", cell))
    return sum(map(int, numbers)) if numbers else None


@pytest.mark.parametrize("name", sorted(_summary_rows()))
def test_summary_row_counts_are_the_files(name):
    cells = _summary_rows()[name]
    counts = _counts(read_json(RESULTS / name))
    for column, key in zip((2, 3, 4, 5), ("sent", "ok", "rejected", "error"), strict=True):
        typed = _cell_total(cells[column])
        if typed is not None:
            assert typed == counts[key], f"{name}: {key} {typed} in the doc, {counts[key]} in the file"


def test_every_result_file_has_a_row():
    files = {p.name for p in RESULTS.iterdir() if p.name.endswith((".json", ".json.gz"))}
    assert files == set(_summary_rows())


def test_burst_latencies_are_the_files():
    data = read_json(RESULTS / "burst_300.json")
    row = _summary_rows()["burst_300.json"][6]
    rejected, floor = data["summary"]["latency"]["rejected"], data["serve_floor_rejected"]
    expected = f"503 p50 {rejected['p50_s']:.2f} s, p99 {rejected['p99_s']:.2f} s, against {floor['p99_s']:.2f} s"
    assert expected in row


def test_soak_section_is_the_file():
    data = read_json(RESULTS / "soak.json.gz")
    section = DOC[DOC.index("## 7. Soak") :].split("\n## ")[0]
    mem = {proc: data["memory"][proc]["RssAnon"] for proc in ("generator", "ingress", "proxy")}

    def row(label: str, key: str, fmt: str) -> str:
        return f"| {label} | " + " | ".join(fmt.format(mem[p][key]) for p in mem) + " |"

    assert row("private RSS (`RssAnon`) at start", "start_mb", "{:.1f} MB") in section
    assert row("after 1 min warm-up", "after_warmup_mb", "{:.1f} MB") in section
    assert row("at the end (10 min)", "end_mb", "{:.1f} MB") in section
    growth = [f"{mem[p]['growth_after_warmup_mb']:+.1f} MB" for p in mem]
    assert f"| growth after warm-up (bound 128 MB) | **{growth[0]}** | {growth[1]} | {growth[2]} |" in section

    s, lat = data["summary"], data["summary"]["latency"]["ok"]

    def spaced(n: int) -> str:  # the doc writes thousands as `5 696`
        return f"{n:,}".replace(",", " ")

    prose = " ".join(section.split())
    for figure in (
        f"Capacity {data['capacity_rps']:.1f} req/s",
        f"offered {data['offered_rps']:.1f} req/s",
        f"{spaced(s['sent'])} sent, {spaced(s['ok'])} answered 200, {s['rejected']} rejected, {s['error']} errors",
        f"p50 {lat['p50_s']:.2f} s, p99 {lat['p99_s']:.2f} s, max {lat['max_s']:.2f} s",
        f"first minute p99 {data['latency_first_minute']['p99_s']:.2f} s",
        f"last minute p99 {data['latency_last_minute']['p99_s']:.2f} s",
        f"Generator {data['memory']['generator']['VmRSS']['start_mb']:.1f} → "
        f"{data['memory']['generator']['VmRSS']['end_mb']:.1f} MB",
    ):
        assert figure in prose, figure
    summary_row = _summary_rows()["soak.json.gz"]
    assert f"({data['offered_rps']:.1f} req/s)" in summary_row[1]
    assert f"+{mem['generator']['growth_after_warmup_mb']:.1f} MB (Generator)" in summary_row[6]
