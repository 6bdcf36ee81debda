"""Every dashboard query returns data from a real Prometheus scraping a real Ray Serve app under load.

Real: Ray Serve on CPU with the tiny random model, HTTP load (valid and bad requests, edits and inpainting beside
generations, overload), Prometheus
(`prometheus` binary, 1 s scrape) running the committed scrape config and rules. Faked, because a CPU has no CUDA:
out-of-memory errors (tests.fakes.WrappingFactory raises torch.OutOfMemoryError for batches above 2 and for one
seed), so the OOM-split and failure series exist. Exempt, because only a GPU produces them: the panels in
GPU_ONLY_PANELS (NVML/GPM gauges); any other empty panel fails the test.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from bench.workload import inpaint_mask
from monitoring import dashboard, dashboard_queries
from monitoring.local_prometheus import ray_metrics_targets, start_prometheus, write_sd_file
from tests import serve_harness
from tests.fakes import WrappingFactory

logger = logging.getLogger(__name__)

PROM_PORT = 19190
METRICS_EXPORT_PORT = 18190
# The buckets `make serve` exports: Serve's latency histograms must resolve seconds-long requests.
LATENCY_BUCKETS_MS = re.search(
    r"RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS \?= ([\d,]+)", (serve_harness.REPO / "Makefile").read_text()
).group(1)
GPU_ONLY_PANELS = {
    "GPU busy: NVML utilization vs SM and tensor activity",
    "VRAM used / total",
    "Power",
    "Images per kJ",
}
# Targets of other panels that only a GPU replica fills: a CPU replica has no memory mode (every mode's gauge is 0).
GPU_ONLY_TARGETS = {("VRAM tier and memory mode", "B")}
FAILING_SEED = 13  # OOMs even alone -> 500 with generation failure reason "oom"
CLIENTS, LOAD_S = 32, 10.0


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


EDIT_IMAGE = _png(Image.new("RGB", (256, 256), (200, 40, 40)))
MASK = inpaint_mask(256, 256)


def _request(client: httpx.Client, i: int) -> int:
    """Mostly valid generations; every 7th is invalid for the ingress (422), every 11th for FastAPI (422); one in 5
    an edit, every other one of them with a mask (inpaint), so the panels by task have three tasks."""
    if i % 10 in (4, 7):
        files = {"image": ("in.png", EDIT_IMAGE, "image/png")}
        if i % 10 == 7:
            files["mask"] = ("mask.png", MASK, "image/png")
        form = {"prompt": f"the same, in blue #{i}", "num_inference_steps": "2", "seed": str(1000 + i)}
        return client.post("/v1/images/edits", data=form, files=files).status_code
    if i % 7 == 3:
        body = {"prompt": "too small", "width": 100, "height": 256}
    elif i % 11 == 5:
        body = {"width": 256}  # no prompt
    else:
        body = {"prompt": f"a red sports car #{i}", "num_inference_steps": 2, "seed": 1000 + i}
    return client.post("/generate", json=body).status_code


def _closed_loop_load(seconds: float, clients: int) -> dict[int, int]:
    codes: dict[int, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    def worker() -> None:
        with httpx.Client(base_url=serve_harness.BASE_URL, timeout=60) as client:
            while time.monotonic() < deadline:
                code = _request(client, next(counter))
                with lock:
                    codes[code] = codes.get(code, 0) + 1
                if code != 200:
                    time.sleep(0.2)  # errors come back at once: do not spin the 2-core CI box

    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    return codes


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A tiny Serve app and a Prometheus scraping it; load ran.

    Yields (prometheus, load start, load end, status codes, time the app was deployed).
    """
    workdir = tmp_path_factory.mktemp("prometheus")
    old_buckets = os.environ.get("RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS")
    os.environ["RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS"] = LATENCY_BUCKETS_MS  # before ray.init: Serve reads it there
    serve_harness.start_cluster(
        num_cpus=4, _metrics_export_port=METRICS_EXPORT_PORT, _system_config={"metrics_report_interval_ms": 1000}
    )
    prom = None
    try:
        serve_harness.deploy(
            serve_harness.tiny_config(),
            pipeline_factory=WrappingFactory(oom_above=2, oom_seeds=(FAILING_SEED,)),
            generator_options={
                "max_ongoing_requests": 8,
                "max_queued_requests": 8,  # 32 clients > 8 + 8: some get 503 queue_full
                "autoscaling_config": {
                    "min_replicas": 1,
                    "max_replicas": 1,  # the policy will want more: "wanted" above "target"
                    "initial_replicas": 1,
                    "target_ongoing_requests": 2,
                    "upscale_delay_s": 1,
                },
            },
        )
        deployed_at = time.time()
        sd_file = write_sd_file(workdir / "prom_metrics_service_discovery.json", ray_metrics_targets())
        prom = start_prometheus(workdir, PROM_PORT, sd_file, scrape_interval="1s")
        start = time.time()
        codes = _closed_loop_load(LOAD_S, CLIENTS)
        with httpx.Client(base_url=serve_harness.BASE_URL, timeout=60) as client:
            failing = client.post("/generate", json={"prompt": "fails", "num_inference_steps": 2, "seed": FAILING_SEED})
        codes[failing.status_code] = codes.get(failing.status_code, 0) + 1
        logger.info("load: %s", codes)
        _wait_for(prom, "ray_zimage_generation_failures_total", timeout_s=30)
        time.sleep(3)  # one more export + scrape after the last request
        yield prom, start - 5, time.time(), codes, deployed_at
    finally:
        if prom is not None:
            prom.stop()
        serve_harness.stop_cluster()
        if old_buckets is None:
            os.environ.pop("RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS", None)
        else:
            os.environ["RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS"] = old_buckets


def _wait_for(prom, expr: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if prom.query(expr):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{expr} never reached Prometheus")


def _finite_points(result: list[dict]) -> int:
    return sum(1 for series in result for _, v in series["values"] if math.isfinite(float(v)))


def test_load_mixed_ok_bad_and_overloaded(loaded):
    _, _, _, codes, _ = loaded
    assert codes.get(200, 0) >= 20, codes
    assert codes.get(422, 0) >= 2, codes
    assert codes.get(503, 0) >= 1, codes
    assert codes.get(500, 0) == 1, codes  # the failing seed


def test_every_dashboard_query_returns_data(loaded):
    prom, start, end, *_ = loaded
    queries = dashboard_queries.load(uid=dashboard.UID)  # the DCGM dashboard: tests/unit/test_monitoring_dcgm.py
    titles = {q.panel for q in queries}
    assert GPU_ONLY_PANELS <= titles, f"stale exemption list: {GPU_ONLY_PANELS - titles}"
    targets = {(q.panel, q.ref_id) for q in queries}
    assert GPU_ONLY_TARGETS <= targets, f"stale exemption list: {GPU_ONLY_TARGETS - targets}"
    empty = []
    for q in queries:
        result = prom.query_range(q.promql(rate_interval="10s"), start, end, step=1)
        points = _finite_points(result)
        logger.info("%-55s %s: %d series, %d finite points", q.panel[:55], q.ref_id, len(result), points)
        if points == 0 and q.panel not in GPU_ONLY_PANELS and (q.panel, q.ref_id) not in GPU_ONLY_TARGETS:
            empty.append(f"{q.panel} [{q.ref_id}] {q.expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_task_and_adapter_panels_split_the_traffic(loaded):
    """The service's task tag reaches the panels: generations, edits and inpainting each have their own series (no
    adapters are configured here: all `none`)."""
    prom, start, end, *_ = loaded
    queries = {(q.panel, q.ref_id): q for q in dashboard_queries.load(uid=dashboard.UID)}

    def labels(panel: str, label: str, ref_id: str = "A") -> set[str]:
        result = prom.query_range(queries[(panel, ref_id)].promql(rate_interval="10s"), start, end, step=1)
        return {series["metric"].get(label) for series in result if _finite_points([series])}

    tasks = {"generate", "edit", "inpaint"}
    assert labels("Images / s by task", "task") == tasks
    assert labels("Images / s by LoRA adapter set", "adapter") == {"none"}
    assert labels("GPU seconds per image by task", "task") == tasks
    assert labels("Batch size by task and adapter set", "task") == tasks


def test_batch_policy_idle_gap_and_admission_panels(loaded):
    """The last row reads what the batch policy, the executor and the ingress record under the load: a planned batch
    and a learnt curve per shape (batches above 2 OOM, so only 1 and 2 are learnt), idle gaps while requests waited
    for the GPU, and the ingress's in-flight images up to its bound beside its own 503s (32 clients > bound 16)."""
    prom, start, end, *_ = loaded
    queries = {(q.panel, q.ref_id): q for q in dashboard_queries.load(uid=dashboard.UID)}

    def series(panel: str, ref_id: str = "A") -> list[tuple[dict, list[float]]]:
        result = prom.query_range(queries[(panel, ref_id)].promql(rate_interval="10s"), start, end, step=1)
        out = [(s["metric"], [float(v) for _, v in s["values"] if math.isfinite(float(v))]) for s in result]
        return [(labels, values) for labels, values in out if values]

    shapes = {f"{task} 256x256 2 steps" for task in ("generate", "edit", "inpaint")}
    planned = series("Planned batch by shape")
    assert {m["shape"] for m, _ in planned} == shapes, planned
    assert all(1 <= v <= 8 for _, values in planned for v in values), planned
    curve = series("Learnt seconds per image by shape and batch size")
    assert {m["shape"] for m, _ in curve} == shapes, curve
    assert {m["batch_size"] for m, _ in curve} <= {"1", "2"} and any(m["batch_size"] == "1" for m, _ in curve)
    assert all(v > 0 for _, values in curve for v in values), curve
    (p50,), (p99,) = series("GPU idle gap while work waits"), series("GPU idle gap while work waits", "B")
    assert all(0 < v <= 1 for v in p50[1] + p99[1]), (p50, p99)
    assert max(p99[1]) >= max(p50[1])
    info = httpx.get(f"{serve_harness.BASE_URL}/info", timeout=30).json()["ingress"]
    (in_flight,) = series("Ingress in-flight images vs rejections")
    assert 1 <= max(in_flight[1]) <= info["max_in_flight_images"] == 16, (in_flight, info)
    rejected = {m["reason"] for m, _ in series("Ingress in-flight images vs rejections", "B")}
    assert "ingress_full" in rejected, rejected


def test_variables_resolve(loaded):
    prom, *_ = loaded
    found = {}
    for name, query in dashboard_queries.variable_queries(uid=dashboard.UID).items():
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
        assert m, query
        match = m.group(1).replace("$Cluster", ".*").replace("$Application", ".*")
        found[name] = prom.label_values(m.group(2), match)
    assert "zimage" in found["Application"]
    assert len(found["Replica"]) == 1
    assert found["Cluster"] == []  # only KubeRay's PodMonitor adds ray_io_cluster


def test_state_gauges_outlive_the_metrics_agent_ttl(loaded):
    """Set once at reconfigure(), still exported 30 s later: Ray 2.60 drops a gauge series that is not re-recorded
    (after ~20 s here), which deployments.observability.metrics.StateGauge prevents."""
    prom, _, _, _, deployed_at = loaded
    time.sleep(max(0.0, deployed_at + 30 - time.time()))
    for metric in ("ray_zimage_max_batch_size", "ray_zimage_tier_vram_gb", 'ray_zimage_memory_mode{mode="gpu"}'):
        assert prom.query(metric), f"{metric} is no longer exported at the end of the run"
    modes = {s["metric"]["mode"]: float(s["value"][1]) for s in prom.query("ray_zimage_memory_mode")}
    assert modes == {"gpu": 0, "text_encoder_offload": 0, "group_offload": 0}, modes  # a CPU replica has no mode
    series = prom.query("ray_zimage_max_batch_size")
    assert len(series) == 1, f"one replica, one series expected: {[s['metric'] for s in series]}"
    assert float(series[0]["value"][1]) == 2  # lowered from 8 by the injected OOMs (batches above 2)


def test_means_use_exact_sums(loaded):
    """Ray exports histogram _sum from bucket midpoints; the dashboard's means must not (batch 1 would read 0.5)."""
    prom, *_ = loaded
    images = float(prom.query("sum(ray_zimage_images_generated_total)")[0]["value"][1])
    calls = float(prom.query("sum(ray_zimage_batch_size_count)")[0]["value"][1])
    midpoint_sum = float(prom.query("sum(ray_zimage_batch_size_sum)")[0]["value"][1])
    assert 1 <= images / calls <= 2, (images, calls)  # the injected OOMs cap batches at 2
    assert midpoint_sum == images  # half-integer bucket bounds: each batch size is its bucket's midpoint
    exact = prom.query("sum by (stage) (ray_zimage_stage_seconds_exact_total)")
    assert {s["metric"]["stage"] for s in exact} == {"encode", "denoise", "decode"}
    assert all(float(s["value"][1]) > 0 for s in exact)


def test_serve_histograms_use_the_configured_buckets(loaded):
    """7500 ms is not a default Serve bucket: present only if the env var reached the proxy and replicas."""
    prom, *_ = loaded
    for metric in ("ray_serve_http_request_latency_ms_bucket", "ray_serve_batch_wait_time_ms_bucket"):
        les = {s["metric"]["le"] for s in prom.query(f'{metric}{{application="zimage"}}')}
        assert "7500.0" in les and "300000.0" in les, f"{metric}: {sorted(les, key=float)}"


def test_recording_rules_evaluate_on_real_series(loaded):
    """The rules' label matchers (deployment="Generator", error_code, status_code, route) fit what Ray exports."""
    prom, start, end, *_ = loaded
    for record in (
        "zimage:images_generated:rate5m",
        "zimage:http_requests:rate5m",
        "zimage:http_5xx:ratio_rate5m",
        "zimage:http_latency_ms:p99_rate5m",
        "zimage:generator_backlog:sum",
    ):
        assert _finite_points(prom.query_range(record, start, end, step=1)), f"{record} is empty"
    ratio = prom.query("zimage:http_5xx:ratio_rate5m")
    assert ratio and 0 < float(ratio[0]["value"][1]) < 1
