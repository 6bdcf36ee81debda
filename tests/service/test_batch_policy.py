"""The batch-size policy in real Ray Serve on CPU (tiny model, real HTTP): the `latency` policy learns each shape's
seconds per image per batch size from the batches it runs and batches only where that buys throughput.

The GPU time per batch is controlled by `tests.fakes.WrappingFactory` (real tiny pipeline plus a sleep): images 256
wide cost 0.15 s each (batching buys nothing), images 320 wide cost 0.4 s per call (batching pays). The tiny model's
own compute adds a per-call cost of a few percent on top, so the tolerance is set above it (0.25).
"""

from __future__ import annotations

import pytest

from tests.fakes import WrappingFactory
from tests.http_client import get_json, post_concurrently

PER_IMAGE = {"width": 256, "height": 256}  # 0.15 s per image
PER_CALL = {"width": 320, "height": 256}  # 0.4 s per call
USER_CONFIG = {"cpu_max_batch_size": 8, "batch_efficiency_tolerance": 0.25}  # batch_policy: the default, latency


@pytest.fixture(scope="module")
def service(serve_cluster, tmp_path_factory):
    factory = WrappingFactory(
        log_path=str(tmp_path_factory.mktemp("policy") / "calls.jsonl"),
        sleep_per_image_by_width={256: 0.15},
        sleep_per_call_by_width={320: 0.4},
    )
    serve_cluster.deploy(
        pipeline_factory=factory, generator_options={"user_config": USER_CONFIG, "max_ongoing_requests": 16}
    )
    return factory


def _wave(shape: dict, seed0: int, n: int = 8) -> list[int]:
    bodies = [{"prompt": f"a fox {i}", "seed": seed0 + i, "num_inference_steps": 1, **shape} for i in range(n)]
    responses = post_concurrently("/generate", bodies)
    assert [r.status_code for r in responses] == [200] * n, [r.text[:200] for r in responses]
    return [int(r.headers["X-Batch-Size"]) for r in responses]


def test_where_batching_buys_nothing_requests_run_alone_once_learnt(service):
    first = _wave(PER_IMAGE, 100)  # learns batch 1 and 2; 2 buys nothing, so 4 and 8 are never tried
    assert max(first) > 1, first
    second = _wave(PER_IMAGE, 200)
    assert second == [1] * 8, second  # no request waited for company that bought nothing
    shape = get_json("/info")["generator"]["batching"]["efficiency"]["generate 256x256 1 steps"]
    curve = {int(b): s for b, s in shape["s_per_image"].items()}
    assert set(curve) == {1, 2} and all(s >= 0.15 for s in curve.values()), curve
    assert shape["last_decision"]["batch"] == 1 and shape["last_decision"]["reason"] in ("best", "efficient")


def test_where_batching_pays_batches_grow_with_the_queue(service):
    _wave(PER_CALL, 300)
    second = _wave(PER_CALL, 400)
    assert max(second) >= 4, second  # 7 waiting behind the first: the efficient batch the queue can fill
    batching = get_json("/info")["generator"]["batching"]
    assert batching["policy"] == "latency"
    curve = {int(b): s for b, s in batching["efficiency"]["generate 320x256 1 steps"]["s_per_image"].items()}
    assert curve[4] < curve[2] < curve[1], curve  # learnt from the batches that ran: per call, not per image
    gaps = batching["gpu_idle_gaps_while_waiting"]  # measured between calls while requests waited (no bound here:
    assert gaps["count"] >= 3 and 0 <= gaps["mean_ms"] <= gaps["max_ms"], gaps  # the GPU bench reports it)
    calls = [c for c in service.calls() if c["width"] == 320 and c["outcome"] == "ok"]
    assert max(c["batch"] for c in calls) >= max(second)  # the headers tell the pipeline's truth
