"""The lead's GPU script, end to end on CPU: `BENCH_SMOKE=1 bench/run_gpu.sh all` (tiny random model).

Same code path as on the H100 (private Ray cluster + Serve config deploy, live sweep, in-process baseline, report);
only the config, grid and budgets differ. Slow (~2-3 min on 2 cores: a second Ray cluster), so marked `slow`:
run it with `pytest -m slow tests/unit/test_bench_script.py`.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from bench.launcher import REPO


@pytest.mark.slow
def test_run_gpu_script_smoke(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "BENCH_SMOKE": "1", "BENCH_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.run(
        ["bash", str(REPO / "bench/run_gpu.sh"), "all"], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    serve = json.loads((tmp_path / "serve/serve_sweep.json").read_text())
    base = json.loads((tmp_path / "baseline/baseline.json").read_text())
    grid = [(r["summary"]["width"], r["summary"]["batch_size"]) for r in serve["rows"]]
    assert grid == [(256, 1), (256, 2), (256, 4), (512, 1), (512, 2)] and not serve["skipped"]
    assert [(r["summary"]["width"], r["summary"]["batch_size"]) for r in base["rows"]] == grid
    for row in serve["rows"]:
        s = row["summary"]
        assert s["ok"] == s["sent"] and s["effective_max_batch"] == s["batch_size"] and not s["replica_restarted"]
    for name in ("report.md", "comparison.csv", "compare_throughput.png", "serve_sweep.md", "baseline.md"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert list((tmp_path / "serve/serve_logs").glob("replica_zimage_Generator_*.log"))
