"""The bench against the real service: real Ray Serve on CPU (tiny random model), deployed from a config through
the Serve REST API exactly as `bench sweep --launch` does, reconfigured live between rows.

Checks: the observed X-Batch-Size follows the live max_batch_size change with the same replica process; counts
reconcile when the bounded queue rejects (real 503s); `bench run` (open loop) and `bench baseline` + `bench report`
produce their files; `bench run --task edit|inpaint --lora` edits images the service made, through the real multipart
parser, with a real (tiny, peft-made) adapter the config serves; `bench capacity` compares two user_config variants
(latency vs offered load, capacity plan) on the same replica.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from bench.capacity_plan import capacity_plan
from bench.cli import main
from bench.flops import arch_for_source
from bench.launcher import REPO, launched_service, load_config
from bench.loadgen import LoadSpec, run_load
from bench.report import write_run_report
from bench.results import RunFile, read_json
from bench.shape_mix import fits, preset_shapes
from bench.stats import request_stats
from bench.sweep import SweepPlan, run_sweep
from bench.workload import Workload
from tests import serve_harness
from tests.lora_adapters import save_tiny_adapter

HTTP_PORT = int(os.environ.get("ZIMAGE_TEST_HTTP_PORT", "18000"))
DASHBOARD_PORT = int(os.environ.get("ZIMAGE_TEST_DASHBOARD_PORT", str(HTTP_PORT + 65)))


def _config(adapter: str) -> dict:
    cfg = load_config(REPO / "bench/configs/cpu_smoke.yaml", HTTP_PORT)
    app = cfg["applications"][0]
    app["args"]["lora"] = {"max_rank": 8}  # adapter slots, for `bench run --lora`
    gen = next(d for d in app["deployments"] if d["name"] == "Generator")
    gen["max_ongoing_requests"], gen["max_queued_requests"] = 8, 8  # small bounded queue: overload -> 503
    gen["user_config"]["loras"] = {"ink": {"source": adapter}}
    return cfg


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    # The bench starts its own Ray in this process (as `bench sweep --launch` does): end the tests' shared cluster.
    serve_harness.stop_cluster()
    adapter = str(save_tiny_adapter(tmp_path_factory.mktemp("lora") / "ink"))
    with launched_service(_config(adapter), dashboard_port=DASHBOARD_PORT, num_cpus=4, ready_timeout_s=300) as svc:
        yield svc


@pytest.fixture(scope="module")
def sweep(service, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    plan = SweepPlan(grid=[(256, 256, [1, 4])], batches=2, warmup_batches=1, warmup_steps=1, min_requests=4)
    run = RunFile(out / "serve_sweep.json", "serve_sweep", "served", "random:tiny", {"gpu": {}}, plan.describe())
    run.set(service=service.startup_info)
    run_sweep(service.control, plan, run, sampler=None)
    return run


def test_live_reconfigure_changes_the_observed_batch_size(service, sweep):
    rows = {r["summary"]["batch_size"]: r for r in sweep.data["rows"]}
    assert set(rows) == {1, 4}
    for bs, row in rows.items():
        s = row["summary"]
        bad = [(r["outcome"], r["status"], r["error"]) for r in row["requests"] if r["outcome"] != "ok"]
        assert s["ok"] == s["sent"] > 0, bad
        assert s["effective_max_batch"] == bs
        assert s["replica_restarted"] is False
    seen = {bs: [r["batch_size"] for r in row["requests"] if r["phase"] == "measure"] for bs, row in rows.items()}
    assert set(seen[1]) == {1}
    assert max(seen[4]) == 4 and rows[4]["summary"]["mean_batch_size"] > 1.5
    start_pid = service.startup_info["generator"]["pid"]
    info = service.control.info()["generator"]
    assert info["pid"] == start_pid  # reconfigure(), not a new replica
    assert info["user_config"]["max_batch_size"] == 1  # the sweep restored the deployed value


def test_sweep_json_and_report(sweep, tmp_path):
    data = json.loads(sweep.path.read_text())
    assert len(data["rows"]) == 2 and data["model_source"] == "random:tiny"
    paths = write_run_report(data, tmp_path)
    md = paths["markdown"].read_text()
    assert "## 256x256, 8 steps" in md and "| 4 |" in md and "n/a" in md  # CPU: telemetry columns are n/a
    assert all(paths[k].stat().st_size > 0 for k in ("plot_throughput", "plot_vram", "plot_latency_cdf"))


def test_counts_reconcile_when_the_queue_rejects(service):
    """40 requests at once against 8 ongoing + 8 queued slots. Each is 512x512 x 16 steps (~8x a 256x256 x 8 one), so
    the replica cannot drain 24 slots while the burst arrives, even on a loaded 2-core box (at 256x256 x 8 steps it
    sometimes did, and nothing was rejected)."""
    service.control.set_max_batch_size(2)
    spec = LoadSpec(mode="closed", concurrency=40, requests=40, duration_s=180, timeout_s=180)
    phases = run_load(service.url, Workload(512, 512, 16), spec)
    recs = [r.as_dict() for r in phases["measure"].records]
    s = request_stats(recs)
    assert s["sent"] == 40 == s["ok"] + s["rejected"] + s["errors"]
    assert s["ok"] > 0 and s["rejected"] > 0 and s["errors"] == 0  # 8 ongoing + 8 queued fit; the rest get 503
    assert {r["status"] for r in recs if r["outcome"] == "rejected"} == {503}


def test_cli_open_loop_run(service, tmp_path):
    argv = ["run", "--url", service.url, "--mode", "open", "--rate", "4", "--requests", "6", "--warmup-requests", "1"]
    assert main([*argv, "--out", str(tmp_path)]) == 0  # no --size: the service's default size (from /info)
    data = json.loads((tmp_path / "load.json").read_text())
    s = data["rows"][0]["summary"]
    assert s["ok"] == s["sent"] == 6 and s["offered_rate_rps"] > 0
    assert (s["width"], s["height"]) == (256, 256)
    assert (tmp_path / "load.md").exists() and (tmp_path / "load_latency_cdf.png").exists()


def _cli_run(url: str, out, *options: str) -> tuple[int, dict]:
    code = main(["run", "--url", url, "--steps", "4", "--prompt-mode", "varied", *options, "--out", str(out)])
    return code, json.loads((out / "load.json").read_text())


def test_cli_inpaint_run_with_an_adapter(service, tmp_path):
    """Inputs made through /generate, sent back to /v1/images/edits with a mask and `lora` as a JSON form field."""
    options = ("--task", "inpaint", "--lora", "ink:0.5", "--strength", "0.5", "--edit-inputs", "2")
    code, data = _cli_run(service.url, tmp_path, *options, "--concurrency", "2", "--requests", "4")
    s = data["rows"][0]["summary"]
    assert code == 0 and s["ok"] == s["sent"] == 4, data["rows"][0]["requests"]
    assert (s["task"], s["adapter"], s["lora"], s["strength"], s["dit_steps"]) == ("inpaint", "ink", "ink:0.5", 0.5, 2)
    dit = arch_for_source("random:tiny").forward_flops(256, 256)
    assert s["dit_tflop_per_image"] == pytest.approx(2 * dit / 1e12)  # FLOPs of the 2 DiT steps that ran, not 4
    st = data["settings"]
    assert st["endpoint"] == "edits" and st["edit_inputs"]["images"] == 2
    assert st["lora"] == [{"name": "ink", "scale": 0.5}]
    assert "inpaint, strength 0.5, LoRA ink:0.5" in data["label"]
    md = (tmp_path / "load.md").read_text()
    assert "## 256x256, 4 steps, inpaint, strength 0.5 (2 DiT steps), LoRA ink:0.5" in md
    assert "2 of 4 steps run the DiT; LoRA ink:0.5 (metric tag adapter=ink)" in md


def test_cli_edit_run_takes_the_service_default_strength(service, tmp_path):
    code, data = _cli_run(service.url, tmp_path, "--task", "edit", "--edit-inputs", "1", "--requests", "2")
    s = data["rows"][0]["summary"]
    assert code == 0 and s["ok"] == s["sent"] == 2
    assert (s["task"], s["adapter"], s["strength"], s["dit_steps"]) == ("edit", "none", 0.6, 3)  # /info's default


def test_cli_edit_run_with_an_unknown_adapter_is_refused(service, tmp_path):
    """The multipart `lora` field reaches the service: an adapter it does not serve is a 422 naming the field."""
    options = ("--task", "edit", "--lora", "nosuch", "--edit-inputs", "1", "--requests", "2")
    code, data = _cli_run(service.url, tmp_path, *options)
    records = data["rows"][0]["requests"]
    assert code == 1 and {(r["status"], r["outcome"]) for r in records} == {(422, "error")}
    assert all("nosuch" in r["error"] for r in records), records[0]["error"]


def test_baseline_and_comparison_report(sweep, tmp_path):
    argv = ["baseline", "--model", "random:tiny", "--device", "cpu", "--grid", "256=1,4", "--repeats", "1"]
    assert main([*argv, "--warmup-steps", "1", "--out", str(tmp_path / "b")]) == 0
    base = json.loads((tmp_path / "b/baseline.json").read_text())
    assert [r["summary"]["images"] for r in base["rows"]] == [1, 4]
    argv = ["report", "--serve", str(sweep.path), "--baseline", str(tmp_path / "b/baseline.json")]
    assert main([*argv, "--out", str(tmp_path / "r")]) == 0
    report = (tmp_path / "r/report.md").read_text()
    assert "| 256x256 | 1 |" in report and "| 256x256 | 4 |" in report
    assert (tmp_path / "r/compare_throughput.png").exists() and (tmp_path / "r/comparison.csv").exists()


def test_cli_capacity_plan_for_two_variants(service, tmp_path):
    """`bench capacity` end to end: two user_config variants applied live (max batch 1 vs 4), each one's capacity
    from a closed loop, open loops at 0.5x and 1.1x of mb4's (`--rates-from mb4`: measured first, though listed
    second; both variants get the same rates); counts reconcile, the plan is the one the measured loads give, the
    plot is written, and the deployed user_config is back afterwards."""
    deployed = service.control.info()["generator"]["user_config"]["max_batch_size"]
    variants = ["--variant", 'mb1={"max_batch_size": 1}', "--variant", 'mb4={"max_batch_size": 4}']
    load = ["--loads", "0.5", "1.1", "--requests-per-load", "4", "--capacity-requests", "4", "--warmup-requests", "0"]
    plan = ["--p99-target-s", "60", "--target-rate", "20", "--steps", "2", "--out", str(tmp_path)]
    argv = ["capacity", "--url", service.url, "--dashboard", service.dashboard_url, *variants, *load, *plan]
    argv += ["--rates-from", "mb4"]
    assert main(argv) == 0
    data = read_json(tmp_path / "capacity.json.gz")
    assert {k: v["user_config"]["max_batch_size"] for k, v in data["variants"].items()} == {"mb1": 1, "mb4": 4}
    assert not any(v["replica_restarted"] for v in data["variants"].values())
    assert [r["summary"]["variant"] for r in data["rows"]] == ["mb4"] * 3 + ["mb1"] * 3
    basis = data["rows"][0]["summary"]["throughput_img_s"]  # mb4's capacity
    for name, batch in (("mb1", 1), ("mb4", 4)):
        rows = [r["summary"] for r in data["rows"] if r["summary"]["variant"] == name]
        cap, loads = rows[0], rows[1:]
        assert cap["phase"] == "capacity" and cap["concurrency"] == 2 * batch and cap["ok"] == cap["sent"] == 4
        assert [s["fraction"] for s in loads] == [0.5, 1.1]
        for s in loads:
            assert s["sent"] == 4 == s["ok"] + s["rejected"] + s["errors"]
            assert s["offered_rate_rps"] == pytest.approx(s["fraction"] * basis)
            assert set(s["by_shape"]) == {"256x256"} and s["by_shape"]["256x256"]["mean_batch_size"] <= batch
        (p,) = [p for p in data["plans"] if p["variant"] == name]
        assert p == {"variant": name, "workload": "single", **capacity_plan(loads, cap["throughput_img_s"], 60, 20)}
        assert p["basis"] == "lower bound" and p["max_rate_rps"] == pytest.approx(1.1 * basis)
        assert p["replicas_needed"] == math.ceil(20 / p["max_rate_rps"])
    assert (tmp_path / "capacity_latency_vs_load.png").stat().st_size > 0 and (tmp_path / "capacity.md").exists()
    assert main(["report", str(tmp_path / "capacity.json.gz"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again/capacity_latency_vs_load.png").exists()  # re-rendered from the compressed JSON
    info = service.control.info()
    assert info["generator"]["user_config"]["max_batch_size"] == deployed  # restored
    shapes, note = preset_shapes(info)  # `--workload presets` on this service: every preset, scaled to fit
    assert "scaled down" in note and all(fits(info["limits"], w, h) for w, h in shapes)
