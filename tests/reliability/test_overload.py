"""Overload over real Serve (tiny model on CPU, real HTTP): open-loop load at ~3x the measured capacity, a proxy-bound
burst, and a burst against a slow pipeline.

What must hold: the service stays up (/healthz answers throughout), the excess is refused fast with 503 + Retry-After,
every accepted request completes, and every request is accounted for (sent = ok + rejected + errors, errors = 0).
No queue may grow without bound: the Generator's handle queue is capped by `max_queued_requests`, so the slowest
accepted request and the drain after the load stops are bounded by (ongoing + queued) / capacity.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time

import httpx
import pytest

from bench import loadgen as lg
from bench.burst import burst
from tests import serve_floor, serve_harness
from tests.fakes import WrappingFactory
from tests.http_client import post, post_concurrently

# Batches of 4, two batches' worth at the replica, two more queued at the ingress's handle.
GEN = {"max_ongoing_requests": 8, "max_queued_requests": 8, "user_config": {"cpu_max_batch_size": 4}}
# 512x512 (~3 img/s on 2 cores) keeps the offered rate low enough that the client and proxy are not the bottleneck.
PAYLOAD = {"prompt": "a realistic photo of a red sports car on a mountain road at sunset", "width": 512, "height": 512}
OVERLOAD_FACTOR = 3.0
OVERLOAD_S = 9.0


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
        serve_harness.BASE_URL, concurrency=GEN["max_ongoing_requests"], duration_s=4, send=send
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


BURST = 300
# The goal was 0.5 s. On a 2-core box Serve's own floor is above it: the same burst against a FastAPI app that
# answers 503 at once (tests/serve_floor.py) takes p99 ~1 s. The product's refusals are bounded relative to that floor,
# measured in the same test, so the bound holds on a slow box and still fails if refusing gets slower than Serve.
FLOOR_FACTOR = 3.0


def test_a_300_request_burst_is_refused_by_the_ingress_at_once(service):
    """300 requests at once: the ingress admits what the Generator's options hold (ongoing + queued = 16 images,
    /info `ingress`) and answers the others 503 from its own count instead of leaving them to Serve's router (which
    probes the busy replica first: `Failed to get queue length ... within 0.1s`); every 503 is typed, has Retry-After,
    nothing but 200 and 503 comes back, and no place leaks (in flight back to 0).

    Latency counts from the burst's start; the client is aiohttp (`bench.burst`: httpx's pool alone takes seconds to
    open 300 connections on 2 cores). The bound is relative: first the same burst goes to `tests/serve_floor.py`,
    Serve's own floor for a 503; the product's 503 p99 must stay within FLOOR_FACTOR x that (it also runs the admitted
    images on the same cores) and come back before half of the admitted images. Both are recorded in `burst_300`.
    """
    bound = GEN["max_ongoing_requests"] + GEN["max_queued_requests"]
    ingress = httpx.get(f"{service}/info", timeout=30).json()["ingress"]
    assert (ingress["max_in_flight_images"], ingress["in_flight_images"]) == (bound, 0), ingress

    serve_floor.deploy(service)
    try:
        floor, _ = asyncio.run(burst(service, PAYLOAD, BURST, path="/floor/generate"))
    finally:
        serve_floor.delete()
    floor_s = lg.summarize(floor)
    assert floor_s["rejected"] == BURST, floor_s["codes"]
    floor_p99 = floor_s["latency"]["rejected"]["p99_s"]
    outcomes, wall_s = asyncio.run(burst(service, PAYLOAD, BURST))
    s = lg.summarize(outcomes)
    rejected = [o for o in outcomes if o.kind == "rejected"]
    errors = [json.loads(o.error)["error"] for o in rejected]
    by_ingress = sum("at this ingress" in e["message"] for e in errors)
    by_serve = len(rejected) - by_ingress
    after = httpx.get(f"{service}/info", timeout=30).json()["ingress"]
    figures = {
        "burst": BURST,
        "generator_options": GEN,
        "ingress_bound": bound,
        "summary": s,
        "rejected_p99_s": s["latency"]["rejected"]["p99_s"],
        "serve_floor_rejected": floor_s["latency"]["rejected"],
        "rejected_by_ingress": by_ingress,
        "rejected_by_serve": by_serve,
        "wall_s": wall_s,
        "in_flight_after": after["in_flight_images"],
    }
    lg.save_result("burst_300", figures, outcomes)

    assert s["sent"] == BURST == s["ok"] + s["rejected"] and s["error"] == 0, s["codes"]
    assert {o.status for o in outcomes} <= {200, 503}, s["codes"]
    # The first `bound` arrivals are admitted: each is served or (rarely: Serve's router may refuse a request of a
    # simultaneous batch early) refused by Serve; every other 503 is the ingress's own call.
    assert s["ok"] + by_serve >= bound and by_ingress > 0 and by_serve <= bound, figures
    assert all(o.retry_after == "2" for o in rejected)
    assert all(e["type"] == "overloaded" and e["code"] == "queue_full" for e in errors), errors[:1]
    assert after["in_flight_images"] == 0
    assert s["latency"]["rejected"]["p99_s"] < min(FLOOR_FACTOR * floor_p99, s["latency"]["ok"]["p50_s"]), figures


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


def _edit_while_full(base_url: str, timeout_s: float) -> tuple[httpx.Response | None, list]:
    """Send a multipart body that would not parse to /v1/images/edits every 50 ms until one is refused: only a full
    ingress refuses it, and before reading it (a 503); an ingress with room reads it and answers 422. The probes never
    reach the generator, so they take none of its queue slots (an /info poll would: its generator call can take the
    slot a burst request needs, and then the ingress never fills). Returns the 503 (or None) and every (s, status)."""
    multipart = {"content-type": "multipart/form-data; boundary=zz"}
    deadline, seen, start = time.monotonic() + timeout_s, [], time.monotonic()
    while time.monotonic() < deadline:
        edit = httpx.post(f"{base_url}/v1/images/edits", content=b"x" * 100_000, headers=multipart, timeout=10)
        seen.append((round(time.monotonic() - start, 2), edit.status_code))
        if edit.status_code == 503:
            return edit, seen
        assert edit.status_code == 422, edit.text  # read and refused as malformed: the ingress had room
        time.sleep(0.05)
    return None, seen


def _timings(responses) -> list:
    return [(r.status_code, round(r.elapsed.total_seconds(), 2)) for r in responses]


def test_burst_on_a_slow_pipeline_gets_fast_503_with_retry_after_and_recovers(serve_cluster):
    """With 2 ongoing + 2 queued and a slow pipeline, a burst gets 200s for what fits and fast, typed 503s with the
    configured Retry-After for the rest; an edit sent while the ingress is full is refused the same way before its
    upload is read (a multipart body that would not parse gets the 503, not a 4xx); the service then recovers.

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
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = pool.submit(post_concurrently, "/generate", bodies)
        edit, seen = _edit_while_full(serve_cluster.BASE_URL, timeout_s=5 * SLOW_S)
        info = httpx.get(f"{serve_cluster.BASE_URL}/info", timeout=30)  # answers under overload too
        responses = sent.result()
    assert edit is not None, f"no edit was refused while the burst ran: (s, status) {seen}; burst {_timings(responses)}"
    assert edit.json()["error"]["code"] == "queue_full", edit.text
    assert info.status_code == 200, info.text
    assert edit.headers["Retry-After"] == str(RETRY_AFTER_S)
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
