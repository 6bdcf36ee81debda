"""Serve's own floor for a refusal: a FastAPI ingress that answers every POST 503 at once, with no model and no
state, deployed with the product Ingress's options. A burst against it measures what Serve's proxy and replica cost
per request on this box, so a test can bound the product's refusals relative to it instead of to a wall-clock
figure that depends on the machine."""

from __future__ import annotations

import time

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from ray import serve

from deployments.app import INGRESS_DEFAULTS

api = FastAPI()
OPTIONS = {k: v for k, v in INGRESS_DEFAULTS.items() if k in ("max_ongoing_requests", "max_queued_requests")}


@serve.deployment(name="RefuseAll", ray_actor_options={"num_cpus": 0}, **OPTIONS)
@serve.ingress(api)
class RefuseAll:
    @api.post("/generate")
    async def generate(self, body: dict) -> JSONResponse:
        error = {"error": {"type": "overloaded", "code": "queue_full", "message": "floor"}}
        return JSONResponse(error, status_code=503, headers={"Retry-After": "2"})


def deploy(base_url: str, prefix: str = "/floor", timeout_s: float = 60.0) -> None:
    """Deploy it next to the product (its own route prefix) and wait until the proxy routes to it."""
    serve.run(RefuseAll.bind(), name="floor", route_prefix=prefix, blocking=False)
    deadline = time.monotonic() + timeout_s
    while httpx.post(f"{base_url}{prefix}/generate", json={}, timeout=10).status_code != 503:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{prefix} not routed after {timeout_s}s")
        time.sleep(0.2)


def delete() -> None:
    serve.delete("floor", _blocking=True)
