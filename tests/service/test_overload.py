"""Overload is bounded: with a small `max_ongoing_requests` / `max_queued_requests` and a slow pipeline, a burst gets
fast 503s with Retry-After and a JSON body for what does not fit, 200s for the rest, and the service recovers.

Fake: the GPU's slowness (`tests.fakes.WrappingFactory(sleep_s=...)` sleeps in each denoise call of the real tiny
pipeline); Serve's queueing and back-pressure, the ingress and HTTP are real.
"""

from __future__ import annotations

import logging
import time

import pytest

from tests.fakes import WrappingFactory
from tests.http_client import post, post_concurrently

logger = logging.getLogger(__name__)
SLOW_S = 1.5
RETRY_AFTER_S = 3


@pytest.fixture(scope="module")
def slow_service(serve_cluster):
    serve_cluster.deploy(
        config=serve_cluster.tiny_config(retry_after_s=RETRY_AFTER_S),
        pipeline_factory=WrappingFactory(sleep_s=SLOW_S),
        generator_options={
            "max_ongoing_requests": 2,
            "max_queued_requests": 2,
            "user_config": {"cpu_max_batch_size": 2, "batch_wait_timeout_s": 0.1},
        },
    )


def test_burst_gets_some_503_with_retry_after(slow_service):
    burst = 12
    start = time.monotonic()
    bodies = [{"prompt": f"a cat {i}", "seed": i, "num_inference_steps": 1} for i in range(burst)]
    responses = post_concurrently("/generate", bodies)
    codes = [r.status_code for r in responses]
    logger.info("burst of %d: %s", burst, codes)
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
