"""Run a throwaway Prometheus (the `prometheus` binary, e.g. Debian's) against a local Ray cluster, and query it.

The config is monitoring/prometheus/prometheus.yml with the scrape interval, the service-discovery file and the rule
paths swapped in, so tests and the snapshot script exercise the committed config and rules. Ray's dashboard writes
the service-discovery file; a cluster started with include_dashboard=False has none, so `write_sd_file` writes the
same JSON (`[{"labels": {"job": "ray"}, "targets": [...]}]`) from `ray.nodes()`.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

logger = logging.getLogger(__name__)

PROM_DIR = Path(__file__).resolve().parent / "prometheus"


def ray_metrics_targets() -> list[str]:
    """host:port of every live node's metrics export port (what Ray's service-discovery writer lists first)."""
    import ray

    return [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes() if n["Alive"]]


def write_sd_file(path: Path, targets: list[str]) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))
    tmp.replace(path)  # atomic, as Ray does: Prometheus never reads half a file
    return path


def render_config(sd_file: Path, scrape_interval: str = "1s", with_rules: bool = True) -> dict:
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    cfg["global"] = {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval}
    cfg["rule_files"] = [str(PROM_DIR / r) for r in cfg.get("rule_files", [])] if with_rules else []
    (job,) = cfg["scrape_configs"]
    job["file_sd_configs"] = [{"files": [str(sd_file)], "refresh_interval": "5s"}]
    return cfg


@dataclass
class LocalPrometheus:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def api(self, path: str, **params) -> dict | list:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def label_values(self, label: str, match: str) -> list[str]:
        return self.api(f"label/{label}/values", **{"match[]": match})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_prometheus(
    workdir: Path, port: int, sd_file: Path | None, scrape_interval: str = "1s", config: dict | None = None
) -> LocalPrometheus:
    """Start Prometheus on 127.0.0.1:`port` with its TSDB in `workdir`; waits until /-/ready.

    `config` replaces the committed config (then `sd_file` is unused), e.g. to scrape recorded series."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("no `prometheus` binary on PATH (Debian/Ubuntu: apt-get install prometheus)")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config or render_config(sd_file, scrape_interval)))
    log_path = workdir / "prometheus.log"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ],
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )
    prom = LocalPrometheus(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200:
                logger.info("prometheus ready at %s (scrape every %s, data in %s)", prom.url, scrape_interval, workdir)
                return prom
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    prom.stop()
    raise TimeoutError(f"prometheus not ready on port {port}: {log_path.read_text()[-2000:]}")
