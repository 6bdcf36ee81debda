"""Dashboards as code: the committed JSON is what monitoring/dashboard.py generates, follows Ray's label conventions,
names only metrics the app declares, and uploads idempotently.

Grafana itself cannot be installed here, so the upload goes to a small local fake HTTP server that records what
grafana-client sends; every PromQL expression is run against a real Prometheus in test_monitoring_integration.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from monitoring import dashboard, dashboard_queries, render_panels, upload

REPO = Path(__file__).resolve().parents[2]
METRICS_PY = REPO / "deployments" / "observability" / "metrics.py"
SNAPSHOT = REPO / "monitoring" / "snapshots" / "tiny-cpu.json"


def _committed() -> dict[Path, dict]:
    return {p: json.loads(p.read_text()) for p in sorted(dashboard.DASHBOARD_DIR.glob("*.json"))}


def _targets(d: dict) -> list[tuple[str, dict]]:
    return [(p["title"], t) for p in d["panels"] for t in p.get("targets", [])]


def test_committed_json_matches_generator():
    rendered = dashboard.render()
    assert set(rendered) == set(_committed()), "dashboards/ has files the generator does not make, or vice versa"
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path.name} is stale: run `python -m monitoring.dashboard` and commit"


def test_targets_grafana_11_with_datasource_variable():
    for d in _committed().values():
        assert d["schemaVersion"] == 41  # grafana-foundation-sdk 11.6 build
        names = [v["name"] for v in d["templating"]["list"]]
        expected = {
            dashboard.UID: ["datasource", "Cluster", "Application", "Replica"],
            dashboard.DCGM_UID: ["datasource", "Namespace", "Pod"],
        }
        assert names == expected[d["uid"]]
        for title, t in _targets(d):
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_selector_follows_ray_label_conventions():
    """Each metric selector filters on application and ray_io_cluster (KubeRay), like Ray's own dashboards."""
    selector = re.compile(r"\b(ray_[a-z_]+)\{([^}]*)\}")
    for d in _committed().values():
        if d["uid"] == dashboard.DCGM_UID:
            continue  # dcgm-exporter's series: test_dcgm_selectors_filter_on_the_workers_pods
        for title, t in _targets(d):
            found = selector.findall(t["expr"])
            assert found, f"{title}: no metric selector in {t['expr']}"
            for metric, labels in found:
                assert 'application=~"$Application"' in labels, f"{title}: {metric} lacks the Application filter"
                assert 'ray_io_cluster=~"$Cluster"' in labels, f"{title}: {metric} lacks the Cluster filter"


def test_panel_ids_stay_put():
    """Links like /d/zimage-serve?viewPanel=N must keep working: a new row goes last, panels join the end of it."""
    (d,) = [d for d in _committed().values() if d["uid"] == dashboard.UID]
    rows = [(p["id"], p["title"]) for p in d["panels"] if p["type"] == "row"]
    assert rows == [
        (1, "Traffic and errors"),
        (5, "Latency"),
        (9, "Queue and batching"),
        (15, "Replicas, memory mode and OOM"),
        (19, "GPU (NVML and GPM, per Generator replica)"),
        (24, "Tasks and LoRA adapters"),
        (29, "Batch policy, GPU idle gaps and ingress admission"),
    ]
    by_id = {p["id"]: p["title"] for p in d["panels"]}
    assert by_id[28] == "Batch size by task and adapter set"  # the last panel before the batch policy row
    assert [by_id[i] for i in range(30, 34)] == [
        "Planned batch by shape",
        "Learnt seconds per image by shape and batch size",
        "GPU idle gap while work waits",
        "Ingress in-flight images vs rejections",
    ]


def test_ingress_metrics_do_not_filter_on_generator_replicas():
    """`$Replica` lists Generator replicas: a metric the Ingress records filtered on it would always be empty."""
    source = METRICS_PY.read_text()
    ingress = source[source.index("class IngressMetrics") :]
    names = set(re.findall(r'"(zimage_[a-z_]+)"', ingress))
    assert "zimage_ingress_in_flight_images" in names
    selector = re.compile(r"\bray_(zimage_[a-z_]+)\{([^}]*)\}")
    seen = set()
    for d in _committed().values():
        for title, t in _targets(d):
            for metric, labels in selector.findall(t["expr"]):
                base = re.sub(r"(_bucket|_sum|_count|_exact_total|_total)$", "", metric)
                if base in names:
                    seen.add(base)
                    assert "$Replica" not in labels, f"{title}: {metric} is an Ingress metric"
    assert {"zimage_ingress_in_flight_images", "zimage_requests_rejected"} <= seen


def test_right_axis_queries_get_their_unit():
    """Ingress in-flight images (left, images) against rejections (right, requests/s): one override per query."""
    (d,) = [d for d in _committed().values() if d["uid"] == dashboard.UID]
    (panel,) = [p for p in d["panels"] if p["title"] == "Ingress in-flight images vs rejections"]
    assert panel["fieldConfig"]["defaults"]["unit"] == "short"
    assert panel["fieldConfig"]["overrides"] == [
        {
            "matcher": {"id": "byFrameRefID", "options": "B"},
            "properties": [{"id": "unit", "value": "reqps"}, {"id": "custom.axisPlacement", "value": "right"}],
        }
    ]
    assert "ray_zimage_requests_rejected_total" in panel["targets"][1]["expr"]
    others = [p for p in d["panels"] if p is not panel and p["type"] != "row"]
    assert all(not p["fieldConfig"]["overrides"] for p in others)


def test_dcgm_selectors_filter_on_the_workers_pods():
    """Every DCGM_FI_* selector filters on Namespace and Pod, in both of dcgm-exporter's labellings."""
    (d,) = [d for d in _committed().values() if d["uid"] == dashboard.DCGM_UID]
    selector = re.compile(r"\b(DCGM_FI_[A-Z_]+)\{([^}]*)\}")
    names = set()
    for title, t in _targets(d):
        found = selector.findall(t["expr"])
        assert found and len(found) % 2 == 0, f"{title}: {t['expr']}"
        for metric, labels in found:
            names.add(metric)
            own = 'namespace=~"$Namespace", pod=~"$Pod"' in labels
            exported = 'exported_namespace=~"$Namespace", exported_pod=~"$Pod"' in labels
            assert own != exported, f"{title}: {metric} {{{labels}}}"
    # The fields the GPU operator's default dcgm-exporter config collects (profiling fields on datacenter GPUs).
    assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_SM_ACTIVE", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"} <= names
    pod = next(v for v in d["templating"]["list"] if v["name"] == "Pod")
    assert pod["allValue"] == dashboard.DCGM_POD_ALL


def test_app_metric_names_are_declared_in_deployments_metrics():
    """GPU series cannot be scraped on CPU, so check their names statically against the declarations
    (deployments/observability/metrics.py)."""
    declared = set(re.findall(r'"(zimage_[a-z_]+)"', METRICS_PY.read_text()))
    exprs = [t["expr"] for d in _committed().values() for _, t in _targets(d)]
    used = {m for e in exprs for m in re.findall(r"ray_(zimage_\w+)", e)}
    assert used, "the dashboards use no ray_zimage_* metric"
    for name in used:  # histogram series, counters' _total, and ExactHistogram's <name>_exact_total
        base = re.sub(r"(_bucket|_sum|_count|_exact_total|_total)$", "", name)
        assert base in declared, f"ray_{name}: no metric {base!r} in deployments/observability/metrics.py"
        if name.endswith("_exact_total"):
            assert re.search(rf'ExactHistogram\(\s*"{base}"', METRICS_PY.read_text()), f"{base} is no ExactHistogram"


class _FakeGrafana(BaseHTTPRequestHandler):
    """Answers POST /api/dashboards/db like Grafana 11 and records every request."""

    requests: list[dict] = []
    versions: dict[str, int] = {}

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        self.requests.append({"method": "POST", "path": self.path, "auth": auth, "body": body})
        if self.path != "/api/dashboards/db":
            self.send_error(404)
            return
        uid = body["dashboard"]["uid"]
        exists = uid in self.versions
        if exists and not body.get("overwrite"):
            self._json(412, {"message": "A dashboard with the same uid already exists", "status": "version-mismatch"})
            return
        self.versions[uid] = self.versions.get(uid, 0) + 1
        self._json(200, {"id": 7, "uid": uid, "url": f"/d/{uid}/x", "status": "success", "version": self.versions[uid]})

    def do_GET(self):
        self.requests.append({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization")})
        self.send_error(404)

    def _json(self, code: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_grafana():
    _FakeGrafana.requests, _FakeGrafana.versions = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _FakeGrafana
    server.shutdown()


def test_upload_is_idempotent(fake_grafana):
    url, fake = fake_grafana
    first = upload.upload(url, "tok-123", folder_uid="ml-serving")
    second = upload.upload(url, "tok-123", folder_uid="ml-serving")
    committed = list(_committed().values())
    assert [a["uid"] for a in first] == [d["uid"] for d in committed]
    assert [a["version"] for a in second] == [2] * len(committed), "a rerun must update in place, not copy"
    assert len(fake.versions) == len(committed)
    posts = [r for r in fake.requests if r["method"] == "POST"]
    assert len(posts) == 2 * len(committed)
    for r in posts:
        assert r["path"] == "/api/dashboards/db"
        assert r["auth"] == "Bearer tok-123"
        assert r["body"]["overwrite"] is True and r["body"]["folderUid"] == "ml-serving"
        assert r["body"]["dashboard"]["id"] is None
    assert posts[0]["body"] == posts[len(committed)]["body"], "the same dashboard must be sent both times"
    sent = posts[0]["body"]["dashboard"]
    assert {k: v for k, v in sent.items() if k != "id"} == {k: v for k, v in committed[0].items() if k != "id"}


def test_upload_cli_reads_env(fake_grafana):
    url, fake = fake_grafana
    env = {**os.environ, "GRAFANA_URL": url, "GRAFANA_TOKEN": "env-token", "PYTHONPATH": str(REPO)}
    env.pop("GRAFANA_FOLDER_UID", None)
    out = subprocess.run(
        [sys.executable, "-m", "monitoring.upload"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "zimage-serve" in out.stderr
    posts = [r for r in fake.requests if r["method"] == "POST"]
    assert posts and all(r["auth"] == "Bearer env-token" and "folderUid" not in r["body"] for r in posts)


def test_upload_cli_needs_url_and_token():
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFANA_")}
    out = subprocess.run(
        [sys.executable, "-m", "monitoring.upload"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "GRAFANA_TOKEN" in out.stderr


def test_committed_snapshot_is_current_and_replots(tmp_path):
    """docs/img/dashboard.png comes from this capture: real data for every main panel, with today's queries."""
    snap = json.loads(SNAPSHOT.read_text())
    assert snap["label"] == "tiny random model, CPU"
    assert [p["title"] for p in snap["panels"]] == list(render_panels.MAIN_PANELS)
    current = {(q.panel, q.ref_id): q.promql(rate_interval=snap["rate_interval"]) for q in dashboard_queries.load()}
    for panel in snap["panels"]:
        assert any(s["values"] for q in panel["queries"] for s in q["result"]), f"{panel['title']}: no data"
        for q in panel["queries"]:
            assert current[(panel["title"], q["ref_id"])] == q["promql"], (
                f"{panel['title']} {q['ref_id']}: query changed since the capture: python -m monitoring.capture_demo"
            )
    png = tmp_path / "dashboard.png"
    render_panels.main(["--from-snapshot", str(SNAPSHOT), "--png", str(png)])
    assert png.stat().st_size > 50_000
