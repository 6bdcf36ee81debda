"""Start real Ray Serve on CPU with the tiny random model (or an injected pipeline) for tests over real HTTP.

The HTTP port is ZIMAGE_TEST_HTTP_PORT, or else a free port picked once per test process: two test runs on one
machine (two checkouts, two helpers) must never send requests to each other's service.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

import httpx
import ray
from ray import serve

from deployments.app import make_app
from deployments.config import AppConfig

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HTTP_PORT = int(os.environ.get("ZIMAGE_TEST_HTTP_PORT") or _free_port())
BASE_URL = f"http://127.0.0.1:{HTTP_PORT}"
# MKL strict reproducibility: GEMM rows do not depend on the batch size, so batched == alone bit for bit on CPU.
WORKER_ENV = {"MKL_CBWR": "AVX2,STRICT", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
# A secret every worker inherits as a process environment variable from the cluster's start, as a Kubernetes Secret
# reaches a pod (not through runtime_env): tests/reliability/test_input.py names it in `api_key_env`.
API_KEY_ENV = "ZIMAGE_TEST_API_KEY"
API_KEY = secrets.token_urlsafe(24)
# Serve checks a stopping replica's in-flight requests every `graceful_shutdown_wait_loop_s` (default 2 s): each
# deleted or replaced test app would wait that long with nothing in flight. Draining still waits for every request.
FAST_SHUTDOWN = {"graceful_shutdown_wait_loop_s": 0.1}


def tiny_config(**overrides) -> AppConfig:
    base = dict(
        model="random:tiny",
        device="cpu",
        dtype="float32",
        limits={"max_side": 512, "max_steps": 16, "max_images_per_request": 4},
        defaults={"width": 256, "height": 256, "num_inference_steps": 8},
    )
    base.update(overrides)
    return AppConfig.model_validate(base)


_shared = False  # the running cluster is the default one that `serve_cluster` modules share


def start_cluster(num_cpus: int = 4, num_gpus: int = 0, **init_kwargs) -> None:
    """A local Ray cluster; logical CPUs/GPUs may exceed the machine's (scheduling only). Replaces a running one (the
    shared default cluster, when a module needs its own settings)."""
    global _shared
    if ray.is_initialized():
        stop_cluster()
    _shared = False
    os.environ.update(WORKER_ENV)
    os.environ[API_KEY_ENV] = API_KEY  # inherited by the raylet and every worker it starts
    ray.init(
        address=init_kwargs.pop("address", "local"),  # always our own: never another run's `ray start` cluster
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": WORKER_ENV},
        **init_kwargs,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": HTTP_PORT})


def stop_cluster() -> None:
    global _shared
    _shared = False
    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def shared_cluster() -> None:
    """The default cluster (`start_cluster()` with 2 logical GPUs), started once and reused by every module that asks
    for it: starting Ray and Serve costs ~15 s a time on a 2-core box. Each module ends with `delete_apps()`."""
    global _shared
    if not (_shared and ray.is_initialized()):
        start_cluster(num_gpus=2)  # logical GPUs (scheduling only) for modules that place replicas as production does
        _shared = True


def delete_apps() -> None:
    """Delete every Serve application (a module's deployments) and keep the cluster and the HTTP proxy running."""
    for name in list(serve.status().applications):
        serve.delete(name, _blocking=True)


def deploy(
    config: AppConfig | None = None,
    pipeline_factory=None,
    generator_options: dict | None = None,
    ingress_options: dict | None = None,
    name: str = "zimage",
) -> str:
    app = make_app(config or tiny_config(), pipeline_factory, *with_fast_shutdown(generator_options, ingress_options))
    serve.run(app, name=name, route_prefix="/", blocking=False)
    wait_healthy()
    return BASE_URL


def with_fast_shutdown(*options: dict | None) -> list[dict]:
    """Deployment options with FAST_SHUTDOWN unless they set their own."""
    return [{**FAST_SHUTDOWN, **(o or {})} for o in options]


def wait_healthy(timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{BASE_URL}/info", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"service at {BASE_URL} not healthy after {timeout_s}s")
