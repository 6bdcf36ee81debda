"""Record the docs' dashboard picture: the tiny CPU service under a load ramp, scraped by a real Prometheus.

Starts a local Ray cluster with the tiny random model (settings of serve_config.cpu.yaml: autoscaling 1..2 Generator
replicas), a Prometheus on the committed config, sends open-loop Poisson load in phases (with a few invalid
requests), then calls monitoring.render_panels. About 5 minutes; needs ~3 CPU cores to keep up.

    python -m monitoring.capture_demo --http-port 18100 --prometheus-port 19190 --metrics-port 18190
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import tempfile
import time
from pathlib import Path

import httpx
import ray
from ray import serve

from deployments.app import make_app
from deployments.config import AppConfig
from monitoring import render_panels
from monitoring.local_prometheus import ray_metrics_targets, start_prometheus, write_sd_file

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
# The latency buckets `make serve` exports (Serve reads them when the cluster starts).
BUCKETS_MS = re.search(r"RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS \?= ([\d,]+)", (REPO / "Makefile").read_text()).group(1)
PHASES = ((30, 0.5), (60, 3.0), (100, 6.0), (40, 0.5))  # (seconds, requests per second)
BAD_SHARE = 0.05


def deploy(http_port: int, metrics_port: int) -> str:
    os.environ.setdefault("RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS", BUCKETS_MS)
    env = {"MKL_CBWR": "AVX2,STRICT", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 2000},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    config = AppConfig.model_validate(
        {
            "model": "random:tiny",
            "device": "cpu",
            "dtype": "float32",
            "limits": {"max_side": 512, "max_steps": 16, "max_images_per_request": 4},
            "defaults": {"width": 256, "height": 256, "num_inference_steps": 8},
        }
    )
    generator = {
        "ray_actor_options": {"num_gpus": 0, "num_cpus": 1},
        "max_ongoing_requests": 16,
        "max_queued_requests": 32,
        "autoscaling_config": {
            "min_replicas": 1,
            "initial_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 4,
            "look_back_period_s": 10,
            "upscale_delay_s": 5,
            "downscale_delay_s": 30,
        },
    }
    serve.run(make_app(config, None, generator), name="zimage", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/info", timeout=10).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("service did not come up")


async def open_loop(url: str, phases=PHASES, seed: int = 0) -> dict[str, int]:
    """Poisson arrivals per phase; each request is sent at its scheduled time whatever the server does."""
    rng = random.Random(seed)
    codes: dict[str, int] = {}
    tasks = []
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=256)) as client:

        async def one(i: int) -> None:
            body = {"prompt": f"a red sports car on a mountain road #{i}", "seed": i}
            if rng.random() < BAD_SHARE:
                body["width"] = 100  # 422
            try:
                code = str((await client.post("/generate", json=body)).status_code)
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            codes[code] = codes.get(code, 0) + 1

        t, i = time.monotonic(), 0
        for seconds, rate in phases:
            end = t + seconds
            while True:
                t += rng.expovariate(rate)
                if t >= end:
                    t = end
                    break
                await asyncio.sleep(max(0.0, t - time.monotonic()))
                tasks.append(asyncio.create_task(one(i)))
                i += 1
            logger.info("phase %.1f req/s done: %s", rate, codes)
        await asyncio.gather(*tasks)
    return codes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, default=18100)
    parser.add_argument("--prometheus-port", type=int, default=19190)
    parser.add_argument("--metrics-port", type=int, default=18190)
    parser.add_argument("--snapshot", type=Path, default=REPO / "monitoring/snapshots/tiny-cpu.json")
    parser.add_argument("--png", type=Path, default=REPO / "docs/img/dashboard.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="zimage-prom-"))
    url = deploy(args.http_port, args.metrics_port)
    prom = start_prometheus(
        workdir, args.prometheus_port, write_sd_file(workdir / "sd.json", ray_metrics_targets()), scrape_interval="2s"
    )
    try:
        time.sleep(10)  # a little idle baseline
        start = time.time() - 10
        codes = asyncio.run(open_loop(url))
        logger.info("load done: %s", codes)
        time.sleep(15)  # let the last exports and scrapes land
        snapshot = render_panels.capture(prom.url, start, time.time(), 2.0, "30s", "tiny random model, CPU")
        snapshot["load"] = {"phases_s_rps": PHASES, "bad_share": BAD_SHARE, "status_codes": codes}
        args.snapshot.parent.mkdir(parents=True, exist_ok=True)
        args.snapshot.write_text(json.dumps(snapshot, indent=1) + "\n")
        render_panels.plot(snapshot, args.png)
    finally:
        prom.stop()
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
