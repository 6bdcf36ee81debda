"""Overload over real Serve (tiny model on CPU, real HTTP): open-loop load at ~3x the measured capacity, a proxy-bound
burst, and a burst against a slow pipeline.

What must hold: the service stays up (/healthz answers throughout), the excess is refused fast with 503 + Retry-After,
every accepted request completes, and every request is accounted for (sent = ok + rejected + errors, errors = 0).
No queue may grow without bound: the Generator's handle queue is capped by `max_queued_requests`, so the slowest
accepted request and the drain after the load stops are bounded by (ongoing + queued) / capacity.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from bench import loadgen as lg
from tests import serve_harness
from tests.fakes import WrappingFactory
from tests.http_client import post, post_concurrently

# Batches of 4, two batches' worth at the replica, two more queued at the ingress's handle.
GEN = {"max_ongoing_requests": 8, "max_queued_requests": 8, "user_config": {"cpu_max_batch_size": 4}}
# 512x512 (~3 img/s on 2 cores) keeps the offered rate low enough that the client and proxy are not the bottleneck.
PAYLOAD = {"prompt": "a realistic photo of a red sports car on a mountain road at sunset", "width": 512, "height": 512}
OVERLOAD_FACTOR = 3.0
OVERLOAD_S = 12.0


@pytest.fixture(scope="module")
def service(serve_cluster):
    serve_cluster.deploy(serve_cluster.tiny_config(), generator_options=GEN)
    return serve_cluster.BASE_URL


async def _watch_health(stop: asyncio.Event) -> list[tuple[int | None, float]]:
    """/healthz every 0.5 s while the load runs: (status, latency)."""
    seen = []
    async with httpx.AsyncClient(base_url=serve_harness.BASE_URL, timeout=10) as c:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                status = (await c.get("/healthz")).status_code
            except httpx.HTTPError:
                status = None
            seen.append((status, time.perf_counter() - t))
            await asyncio.sleep(0.5)
    return seen


async def _overload() -> dict:
    send = lg.generate_request(PAYLOAD)
    capacity = await lg.measure_capacity(
        serve_harness.BASE_URL, concurrency=GEN["max_ongoing_requests"], duration_s=6, send=send
    )
    rate = OVERLOAD_FACTOR * capacity
    stop = asyncio.Event()
    health = asyncio.create_task(_watch_health(stop))
    t0 = time.perf_counter()
    outcomes = await lg.open_loop(serve_harness.BASE_URL, rate, OVERLOAD_S, send, seed=7)
    wall = time.perf_counter() - t0
    stop.set()
    return {"capacity_rps": capacity, "offered_rps": rate, "wall_s": wall, "health": await health, "out": outcomes}


def test_overload_sheds_excess_with_fast_503_and_loses_nothing(service):
    run = asyncio.run(_overload())
    outcomes: list[lg.RequestRecord] = run.pop("out")
    health = run.pop("health")
    s = lg.summarize(outcomes)
    queue_bound = GEN["max_ongoing_requests"] + GEN["max_queued_requests"]
    drain_s = max(o.due_s + o.latency_s for o in outcomes) - OVERLOAD_S
    figures = {
        **run,
        "overload_factor": OVERLOAD_FACTOR,
        "duration_s": OVERLOAD_S,
        "generator_options": GEN,
        "summary": s,
        "goodput_rps": s["ok"] / run["wall_s"],
        "drain_after_load_s": drain_s,
        "healthz": {"polls": len(health), "ok": sum(st == 200 for st, _ in health), "max_s": max(t for _, t in health)},
    }
    lg.save_result("overload", figures, outcomes)

    # Every request is accounted for, and nothing but 200 or 503 came back.
    assert s["sent"] == s["ok"] + s["rejected"] + s["error"]
    assert s["error"] == 0, s["codes"]
    assert s["rejected"] > 0, "3x capacity must shed load"
    assert s["ok"] > 0
    # The excess is refused fast, with Retry-After and a typed error.
    rejected = [o for o in outcomes if o.kind == "rejected"]
    assert all(o.retry_after == "2" and o.code == "queue_full" for o in rejected), {o.code for o in rejected}
    assert s["latency"]["rejected"]["p99_s"] < 1.0
    # Bounded queues: the slowest accepted request and the drain fit (ongoing + queued) / capacity, with slack.
    bound_s = 2 * queue_bound / run["capacity_rps"] + 5
    assert s["latency"]["ok"]["max_s"] < bound_s
    assert drain_s < bound_s
    # Goodput does not collapse under overload (shared 2-core box: generous floor).
    assert figures["goodput_rps"] > 0.4 * run["capacity_rps"]
    # The service stayed up, and still serves after the storm.
    assert figures["healthz"]["ok"] == len(health) and figures["healthz"]["max_s"] < 2.0
    assert httpx.post(f"{service}/generate", json={**PAYLOAD, "prompt": "after"}, timeout=30).status_code == 200


def test_the_proxy_is_bounded_too(service):
    """With a tiny ingress (2 ongoing + 2 queued) and a roomy generator, the excess is refused by the Serve proxy
    itself: 503 + Retry-After (from the ingress's backpressure_config), nothing queued without bound, nothing lost."""
    serve_harness.deploy(
        serve_harness.tiny_config(),
        generator_options={"max_ongoing_requests": 64, "max_queued_requests": 64},
        ingress_options={"max_ongoing_requests": 2, "max_queued_requests": 2},
    )
    responses = post_concurrently("/generate", [{"prompt": f"car {i}"} for i in range(24)])
    statuses = [r.status_code for r in responses]
    rejected = [r for r in responses if r.status_code == 503]
    lg.save_result("proxy_bound", {"statuses": {s: statuses.count(s) for s in set(statuses)}})
    assert set(statuses) == {200, 503} and len(rejected) >= 24 - 4 - 8, statuses
    assert all(r.headers.get("retry-after") == "2" for r in rejected), [dict(r.headers) for r in rejected[:1]]


SLOW_S = 1.5
RETRY_AFTER_S = 3


def test_burst_on_a_slow_pipeline_gets_fast_503_with_retry_after_and_recovers(serve_cluster):
    """With 2 ongoing + 2 queued and a slow pipeline, a burst gets 200s for what fits and fast, typed 503s with the
    configured Retry-After for the rest; the service then recovers.

    Fake: the GPU's slowness (`WrappingFactory(sleep_s=...)` sleeps in each denoise call of the real tiny pipeline);
    Serve's queueing and back-pressure, the ingress and HTTP are real.
    """
    serve_cluster.deploy(
        config=serve_cluster.tiny_config(retry_after_s=RETRY_AFTER_S),
        pipeline_factory=WrappingFactory(sleep_s=SLOW_S),
        generator_options={
            "max_ongoing_requests": 2,
            "max_queued_requests": 2,
            "user_config": {"cpu_max_batch_size": 2, "batch_wait_timeout_s": 0.1},
        },
    )
    burst = 12
    start = time.monotonic()
    bodies = [{"prompt": f"a cat {i}", "seed": i, "num_inference_steps": 1} for i in range(burst)]
    responses = post_concurrently("/generate", bodies)
    codes = [r.status_code for r in responses]
    lg.save_result("slow_burst", {"statuses": {c: codes.count(c) for c in set(codes)}})
    assert set(codes) <= {200, 503}, codes
    ok, rejected = codes.count(200), [r for r in responses if r.status_code == 503]
    assert ok >= 2, codes  # what fits in ongoing + queued is served
    assert len(rejected) >= burst - 2 - 2 - 2, codes  # at most 2 ongoing + 2 queued (+ slack for a finished batch)
    for r in rejected:
        assert r.headers["Retry-After"] == str(RETRY_AFTER_S)
        error = r.json()["error"]
        assert error["type"] == "overloaded" and error["code"] == "queue_full" and "busy" in error["message"]
        assert r.elapsed.total_seconds() < SLOW_S  # rejected at once, not after waiting in a queue
    assert time.monotonic() - start < 10 * SLOW_S

    response = post("/generate", {"prompt": "after the burst", "seed": 1})  # recovers once the burst drains
    assert response.status_code == 200
