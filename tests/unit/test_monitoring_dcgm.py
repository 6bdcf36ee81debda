"""The DCGM dashboard's queries against a real Prometheus scraping dcgm-exporter series.

The series are RECORDED, not live: monitoring/prometheus/recorded/dcgm-exporter.prom holds two GPU nodes' /metrics
in dcgm-exporter's exposition format, because no GPU or dcgm-exporter runs here. A tiny local HTTP server serves
them (the energy counters grow with the elapsed time at the recorded power, as a GPU's would); the real `prometheus`
binary scrapes them twice over: node-a as a target whose labels are honoured (series keep `pod`/`namespace`), node-b
as a target carrying the exporter pod's own `pod`/`namespace`, so Prometheus itself renames the series' labels to
`exported_pod`/`exported_namespace` (a ServiceMonitor without honorLabels). Every panel query must then return exactly
this RayService's two GPU worker pods - never the other workload's GPU or the idle one - with the recorded values.
"""

from __future__ import annotations

import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from monitoring import dashboard, dashboard_queries
from monitoring.local_prometheus import start_prometheus

RECORDED = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus" / "recorded" / "dcgm-exporter.prom"
PROM_PORT = 19290
POD_A = "zimage-raycluster-x7k2p-gpu-worker-4tq9z"  # node-a, labels honoured
POD_B = "zimage-raycluster-x7k2p-gpu-worker-m2r8d"  # node-b, exported_* labels
pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="apt-get install prometheus (make test)")


def _parts() -> dict[str, list[str]]:
    parts: dict[str, list[str]] = {}
    current = None
    for line in RECORDED.read_text().splitlines():
        if line.startswith("# --- "):
            current = parts.setdefault(line[6:].strip(), [])
        elif current is not None:
            current.append(line)
    return parts


def _value(part: list[str], metric: str) -> float:
    """The recorded value of `metric` for the zimage pod of a part."""
    (line,) = [x for x in part if x.startswith(metric + "{") and "zimage-" in x]
    return float(line.rsplit(" ", 1)[1])


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    parts, start = _parts(), time.time()

    class Exporter(BaseHTTPRequestHandler):
        def do_GET(self):
            part = parts.get(self.path.strip("/"))
            if part is None:
                self.send_error(404)
                return
            lines = []
            for line in part:  # energy (mJ) = recorded + elapsed s x recorded W x 1000
                if line.startswith("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{"):
                    labels, value = line.rsplit(" ", 1)
                    watts = _value(part, "DCGM_FI_DEV_POWER_USAGE")
                    line = f"{labels} {int(float(value) + (time.time() - start) * watts * 1000)}"
                lines.append(line)
            body = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Exporter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{server.server_address[1]}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "dcgm-honour", "honor_labels": True, "metrics_path": "/node-a",
             "static_configs": [{"targets": [target]}]},
            {"job_name": "dcgm-exporter", "metrics_path": "/node-b", "static_configs": [
                {"targets": [target], "labels": {"namespace": "gpu-operator", "pod": "nvidia-dcgm-exporter-q8w2x"}}]},
        ],
    }  # fmt: skip
    p = start_prometheus(tmp_path_factory.mktemp("prom-dcgm"), PROM_PORT, None, config=config)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # 8 scrapes of both targets: rate() over 5 s sees a full window
            if len(p.query("count_over_time(DCGM_FI_DEV_GPU_TEMP[1m]) >= 8")) == 2:
                break
            time.sleep(0.5)
        yield p, parts
    finally:
        p.stop()
        server.shutdown()


def test_prometheus_renamed_node_b_labels(prom):
    p, _ = prom
    (b,) = p.query(f'DCGM_FI_DEV_GPU_TEMP{{exported_pod="{POD_B}"}}')
    assert b["metric"]["pod"] == "nvidia-dcgm-exporter-q8w2x" and b["metric"]["exported_namespace"] == "zimage"


def test_every_dcgm_panel_query_returns_both_workers_and_nothing_else(prom):
    p, _ = prom
    queries = dashboard_queries.load(uid=dashboard.DCGM_UID)
    assert len(queries) >= 7
    for q in queries:
        result = p.query(q.promql(rate_interval="5s"))
        pods = sorted(r["metric"].get("pod") for r in result)
        assert pods == sorted([POD_A, POD_B]), f"{q.panel}/{q.ref_id}: {pods}"


def _by_pod(p, expr: str) -> dict[str, float]:
    return {r["metric"]["pod"]: float(r["value"][1]) for r in p.query(expr)}


def _promql(panel: str, ref: str) -> str:
    (q,) = [q for q in dashboard_queries.load(uid=dashboard.DCGM_UID) if (q.panel, q.ref_id) == (panel, ref)]
    return q.promql(rate_interval="5s")


def test_values_and_units_are_the_recorded_ones(prom):
    p, parts = prom
    recorded = {POD_A: parts["node-a"], POD_B: parts["node-b"]}
    busy = "GPU busy (DCGM): utilization vs SM and tensor activity"
    util, tensor = _by_pod(p, _promql(busy, "A")), _by_pod(p, _promql(busy, "D"))
    used, total = (
        _by_pod(p, _promql("VRAM used / total (DCGM)", "A")),
        _by_pod(p, _promql("VRAM used / total (DCGM)", "B")),
    )
    power_now, power_avg = _by_pod(p, _promql("Power (DCGM)", "A")), _by_pod(p, _promql("Power (DCGM)", "B"))
    temp = _by_pod(p, _promql("Temperature (DCGM)", "A"))
    for pod, part in recorded.items():
        assert util[pod] == pytest.approx(_value(part, "DCGM_FI_DEV_GPU_UTIL") / 100)  # percent -> ratio
        assert tensor[pod] == pytest.approx(_value(part, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"))
        mib = 1024 * 1024
        assert used[pod] == _value(part, "DCGM_FI_DEV_FB_USED") * mib
        assert total[pod] == (_value(part, "DCGM_FI_DEV_FB_USED") + _value(part, "DCGM_FI_DEV_FB_FREE")) * mib
        watts = _value(part, "DCGM_FI_DEV_POWER_USAGE")
        assert power_now[pod] == pytest.approx(watts)
        assert power_avg[pod] == pytest.approx(watts, rel=0.1)  # mJ counter rate / 1000 = W
        assert temp[pod] == _value(part, "DCGM_FI_DEV_GPU_TEMP")


def test_variables_resolve(prom):
    p, _ = prom
    queries = dashboard_queries.variable_queries(uid=dashboard.DCGM_UID)
    assert set(queries) == {"Namespace", "Pod"}
    namespaces = p.label_values("namespace", "DCGM_FI_DEV_GPU_UTIL")
    assert "zimage" in namespaces
    pods = p.label_values("pod", f'DCGM_FI_DEV_GPU_UTIL{{namespace=~".*", pod=~"{dashboard.DCGM_POD_ALL}"}}')
    assert pods == [POD_A]  # the honoured labelling lists pods; "All" (the regex) covers both
    # One worker picked in the Pod variable: only its series.
    (q,) = [q for q in dashboard_queries.load(uid=dashboard.DCGM_UID) if q.panel.startswith("Temperature")]
    assert list(_by_pod(p, q.promql(Pod=POD_B))) == [POD_B]
