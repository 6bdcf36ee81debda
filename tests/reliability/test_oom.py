"""Level: over real Serve and HTTP, from outside (tests/unit/test_oom_split.py tests the split logic in-process).

An OOM inside a batch, seen from outside: every request succeeds, /info shows the lower cap, and the Prometheus
counter `ray_zimage_oom_splits_total` on Ray's real metrics export endpoint counts the splits.

Fake: a CPU cannot run out of CUDA memory, so `tests.fakes.WrappingFactory(oom_above=2)` raises
`torch.OutOfMemoryError` from the real tiny pipeline's denoise call when it holds more than 2 images. Serve, the
batching, the split/retry, HTTP and the metrics pipeline (replica -> Ray metrics agent -> /metrics) are real.
This test covers what an operator sees.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from bench import loadgen as lg
from tests import serve_harness
from tests.fakes import WrappingFactory

METRICS_PORT = serve_harness.HTTP_PORT + 10
OOM_ABOVE = 2
GEN = {
    "max_ongoing_requests": 16,
    "user_config": {"batch_policy": "throughput", "batch_wait_timeout_s": 0.5, "cpu_max_batch_size": 8},
}


@pytest.fixture(scope="module")
def service():
    serve_harness.start_cluster(_metrics_export_port=METRICS_PORT)
    serve_harness.deploy(pipeline_factory=WrappingFactory(oom_above=OOM_ABOVE), generator_options=GEN)
    yield serve_harness.BASE_URL
    serve_harness.stop_cluster()


def scrape(name: str, agg=sum) -> float | None:
    """A metric's samples on Ray's Prometheus endpoint, aggregated (None if not exported yet).

    Counters are summed; gauges take `max` - the same gauge can appear under more than one label set."""
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
    values = [float(m[1]) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    return agg(values) if values else None


def wait_metric(name: str, predicate, timeout_s: float = 40, agg=sum) -> float | None:
    """Replicas push metrics to the node's agent every few seconds: poll until the value satisfies `predicate`."""
    deadline, value = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        value = scrape(name, agg)
        if value is not None and predicate(value):
            break
        time.sleep(1)
    return value


async def _burst_then_steady() -> tuple[list[lg.RequestRecord], list[lg.RequestRecord]]:
    """8 at once (one batch over the limit), then 5 s of open-loop load at the lowered cap."""
    async with lg.make_client(serve_harness.BASE_URL, 120) as c:
        send, clock = lg.generate_request(), lg.Clock()
        burst = await asyncio.gather(*(lg.request_at(c, send, clock) for _ in range(8)))
    steady = await lg.open_loop(serve_harness.BASE_URL, 4.0, 5.0, seed=11)
    return list(burst), steady


def test_oom_in_a_batch_splits_succeeds_lowers_the_cap_and_is_counted(service):
    assert (scrape("ray_zimage_oom_splits_total") or 0) == 0
    burst, steady = asyncio.run(_burst_then_steady())
    info = httpx.get(f"{service}/info", timeout=10).json()["generator"]["batching"]
    splits = wait_metric("ray_zimage_oom_splits_total", lambda v: v >= info["oom_splits"] > 0)
    max_batch = wait_metric("ray_zimage_max_batch_size", lambda v: v == OOM_ABOVE, agg=max)
    figures = {
        "oom_above": OOM_ABOVE,
        "burst": lg.summarize(burst),
        "steady": lg.summarize(steady),
        "batch_sizes_in_burst": sorted(o.batch_size for o in burst if o.batch_size),
        "batch_sizes_after": sorted({o.batch_size for o in steady if o.batch_size}),
        "info_batching": info,
        "metric_oom_splits_total": splits,
        "metric_max_batch_size": max_batch,
    }
    lg.save_result("oom_split", figures, burst + steady)

    assert all(o.kind == "ok" for o in burst + steady), figures["burst"]["codes"] + figures["steady"]["codes"]
    assert max(figures["batch_sizes_in_burst"]) <= OOM_ABOVE and max(figures["batch_sizes_after"]) <= OOM_ABOVE
    assert info["oom_cap"] == OOM_ABOVE and info["effective_max_batch"] == OOM_ABOVE and info["oom_splits"] >= 1
    assert splits is not None and splits >= info["oom_splits"], splits
    assert max_batch == OOM_ABOVE
